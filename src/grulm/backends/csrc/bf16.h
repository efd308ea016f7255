// bfloat16 rounding for the kernels' bf16 precision: the top 16 bits of a float32, rounded to
// nearest, ties to even (what torch's ``.bfloat16()`` and the AVX512-BF16 conversions do).

#pragma once

#include <bit>
#include <cstdint>

namespace grulm {

// The bfloat16 bits nearest to x. NaN stays NaN (rounding its payload could carry into Inf).
inline uint16_t to_bf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline float from_bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// x rounded to bfloat16 and back: the emulation of a bf16 operand in float32 storage.
inline float round_bf16(float x) { return from_bf16(to_bf16(x)); }

}  // namespace grulm
