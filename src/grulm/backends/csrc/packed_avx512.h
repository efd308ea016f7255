// The AVX-512 register tiles of PackedMatrix (packed_matmul.h): panels of 32 columns and an
// 8×32 tile held in 16 zmm accumulators, in float32 (FMA) and in bfloat16 (vdpbf16ps: two
// products of bf16 pairs per lane, accumulated in float32).
//
// These functions carry their instruction set as a target attribute, not as a build flag, so
// that the library still loads on a CPU without AVX-512; they only run where grulm::active_isa
// says the CPU has it. With 32 registers there is room for twice the accumulators of the AVX2
// tile, so the loads of the panel and of A are a quarter of the FMAs instead of three quarters.

#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define GRULM_PACKED_AVX512 1
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#define GRULM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define GRULM_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace grulm::avx512 {

constexpr int64_t kPanel = 32;  // columns per panel: two 16-float registers
constexpr int64_t kRows = 8;  // rows per register tile
// K (float32) or K pairs (bf16) per pass: a forward step product's whole depth for H ≤ 512, so
// that the accumulators are not stored and reloaded between passes.
constexpr int64_t kDepth = 512;

// C[r, 0:32] (+)= sum_k A[r·lda + k·step] · panel[k, 0:32] for r < kTileRows: one FMA per k
// in order of k, as the AVX2 tile, so that both give the same bits.
template <int kTileRows, bool kAccumulate>
GRULM_TARGET_AVX512 inline void tile(int64_t K, const float* A, int64_t lda, int64_t step,
                                     const float* panel, float* C, int64_t ldc) {
  __m512 lo[kTileRows], hi[kTileRows];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
    lo[r] = kAccumulate ? _mm512_loadu_ps(C + r * ldc) : _mm512_setzero_ps();
    hi[r] = kAccumulate ? _mm512_loadu_ps(C + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k, A += step) {
    const __m512 p_lo = _mm512_load_ps(panel + k * kPanel);
    const __m512 p_hi = _mm512_load_ps(panel + k * kPanel + 16);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda]);
      lo[r] = _mm512_fmadd_ps(a, p_lo, lo[r]);
      hi[r] = _mm512_fmadd_ps(a, p_hi, hi[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
    _mm512_storeu_ps(C + r * ldc, lo[r]);
    _mm512_storeu_ps(C + r * ldc + 16, hi[r]);
  }
}

// The same tile on bf16: A holds pairs (A[r, 2i], A[r, 2i+1]) side by side (row stride lda
// elements) and each panel row holds [column][pair], so that one vdpbf16ps adds both products
// of a pair to a column's float32 accumulator.
template <int kTileRows, bool kAccumulate>
GRULM_TARGET_AVX512_BF16 inline void tile_bf16(int64_t pairs, const uint16_t* A, int64_t lda,
                                               const uint16_t* panel, float* C, int64_t ldc) {
  __m512 lo[kTileRows], hi[kTileRows];
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
    lo[r] = kAccumulate ? _mm512_loadu_ps(C + r * ldc) : _mm512_setzero_ps();
    hi[r] = kAccumulate ? _mm512_loadu_ps(C + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < pairs; ++i) {
    const __m512bh p_lo = (__m512bh)_mm512_load_si512(panel + i * 2 * kPanel);
    const __m512bh p_hi = (__m512bh)_mm512_load_si512(panel + i * 2 * kPanel + kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * i, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      lo[r] = _mm512_dpbf16_ps(lo[r], a, p_lo);
      hi[r] = _mm512_dpbf16_ps(hi[r], a, p_hi);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kTileRows; ++r) {
    _mm512_storeu_ps(C + r * ldc, lo[r]);
    _mm512_storeu_ps(C + r * ldc + 16, hi[r]);
  }
}

// A tile of `rows` ≤ 8 rows, any panel width ≤ 32 (the padded columns of a narrow last panel
// are computed into a scratch tile and dropped). `Tile` is a functor templated on the row
// count and on accumulation, carrying the target attribute itself: the loops around it are
// plain code, and each tile (a few thousand FMAs) is one call.
template <typename Tile>
inline void tile_any(int64_t rows, int64_t width, bool accumulate,
                                         const Tile& run, float* C, int64_t ldc) {
  alignas(64) float scratch[kRows * kPanel];
  float* out = C;
  int64_t ld = ldc;
  if (width < kPanel) {
    out = scratch;
    ld = kPanel;
    for (int64_t r = 0; r < rows && accumulate; ++r) std::copy_n(C + r * ldc, width, scratch + r * kPanel);
  }
  switch (rows * 2 + (accumulate ? 1 : 0)) {
    case 16: run.template operator()<8, false>(out, ld); break;
    case 17: run.template operator()<8, true>(out, ld); break;
    case 14: run.template operator()<7, false>(out, ld); break;
    case 15: run.template operator()<7, true>(out, ld); break;
    case 12: run.template operator()<6, false>(out, ld); break;
    case 13: run.template operator()<6, true>(out, ld); break;
    case 10: run.template operator()<5, false>(out, ld); break;
    case 11: run.template operator()<5, true>(out, ld); break;
    case 8: run.template operator()<4, false>(out, ld); break;
    case 9: run.template operator()<4, true>(out, ld); break;
    case 6: run.template operator()<3, false>(out, ld); break;
    case 7: run.template operator()<3, true>(out, ld); break;
    case 4: run.template operator()<2, false>(out, ld); break;
    case 5: run.template operator()<2, true>(out, ld); break;
    case 2: run.template operator()<1, false>(out, ld); break;
    default: run.template operator()<1, true>(out, ld); break;
  }
  if (width < kPanel) {
    for (int64_t r = 0; r < rows; ++r) std::copy_n(scratch + r * kPanel, width, C + r * ldc);
  }
}

struct F32Tile {
  int64_t K;
  const float* A;
  int64_t lda, step;
  const float* panel;
  template <int R, bool kAccumulate>
  GRULM_TARGET_AVX512 void operator()(float* C, int64_t ldc) const {
    tile<R, kAccumulate>(K, A, lda, step, panel, C, ldc);
  }
};

struct Bf16Tile {
  int64_t pairs;
  const uint16_t* A;
  int64_t lda;
  const uint16_t* panel;
  template <int R, bool kAccumulate>
  GRULM_TARGET_AVX512_BF16 void operator()(float* C, int64_t ldc) const {
    tile_bf16<R, kAccumulate>(pairs, A, lda, panel, C, ldc);
  }
};

// C (M×N) (+)= A (M×K, A(m, k) = A[m·lda + k·step]) · the packed panels [N/32][K][32].
inline void multiply(int64_t M, int64_t K, int64_t N, const float* A, int64_t lda,
                     int64_t step, const float* panels, float* C, int64_t ldc, bool accumulate) {
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
      const float* panel = panels + (n0 * K + k0 * kPanel);
      for (int64_t m = 0; m < M; m += kRows) {
        const F32Tile run{depth, A + m * lda + k0 * step, lda, step, panel};
        tile_any(std::min(kRows, M - m), std::min(kPanel, N - n0), acc, run, C + m * ldc + n0,
                 ldc);
      }
    }
  }
}

// C (M×N) (+)= A · B for A as bf16 pairs (M rows of 2·pairs elements, row stride lda) and B
// packed as bf16 panels [N/32][pairs][32][2].
inline void multiply_bf16(int64_t M, int64_t pairs, int64_t N, const uint16_t* A,
                          int64_t lda, const uint16_t* panels, float* C, int64_t ldc,
                          bool accumulate) {
  for (int64_t i0 = 0; i0 < pairs; i0 += kDepth) {
    const int64_t depth = std::min(kDepth, pairs - i0);
    const bool acc = accumulate || i0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
      const uint16_t* panel = panels + 2 * (n0 * pairs + i0 * kPanel);
      for (int64_t m = 0; m < M; m += kRows) {
        const Bf16Tile run{depth, A + m * lda + 2 * i0, lda, panel};
        tile_any(std::min(kRows, M - m), std::min(kPanel, N - n0), acc, run, C + m * ldc + n0,
                 ldc);
      }
    }
  }
}

}  // namespace grulm::avx512

#endif
