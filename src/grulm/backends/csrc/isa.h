// Which vector instructions the fused CPU kernels use in this process.
//
// The library is built for the baseline the build machine's PyTorch uses (AVX2/FMA on x86-64);
// the AVX-512 kernels are compiled per function (target pragmas in packed_avx512.h), so that
// the same binary loads on a CPU without AVX-512. Which path runs is chosen once, when the
// extension is loaded: ``set_isa`` (called by grulm.backends.cpu from what ``isa_supported``
// reports and from GRULM_CPU_ISA), else the best this CPU runs.

#pragma once

#include <atomic>
#include <string>
#include <vector>

namespace grulm {

// Ordered: each path runs only where every one below it does too.
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return "avx512-bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

// The best path this CPU (and its OS, which must save the wider registers) runs with this
// build: __builtin_cpu_supports checks both.
inline Isa best_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::kAvx512Bf16;
  if (avx512) return Isa::kAvx512;
#if defined(__AVX2__) && defined(__FMA__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
#endif
  return Isa::kGeneric;
}

namespace detail {
inline std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(best_isa())};
  return slot;
}
}  // namespace detail

// The path in use.
inline Isa active_isa() { return static_cast<Isa>(detail::isa_slot().load()); }

// Uses `isa`, which must be at most best_isa() (the caller checks).
inline void set_active_isa(Isa isa) { detail::isa_slot().store(static_cast<int>(isa)); }

}  // namespace grulm
