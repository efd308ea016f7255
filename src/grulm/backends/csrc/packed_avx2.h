// The AVX2/FMA register tile of PackedMatrix (packed_matmul.h): panels of 16 columns, a 4×16
// tile held in 8 ymm accumulators. Compiled with the library's baseline flags (-mavx2 -mfma).

#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#define GRULM_PACKED_AVX2 1
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace grulm::avx2 {

constexpr int64_t kPanel = 16;  // columns per panel: two 8-float registers
constexpr int64_t kRows = 4;  // rows per register tile
constexpr int64_t kDepth = 256;  // K per pass, so that a panel (16 KiB) stays in L1

// C[r, 0:16] (+)= sum_k A[r·lda + k·step] · panel[k, 0:16] for r < kTileRows, one FMA per k
// in order of k (the accumulation order that every float32 path shares).
template <int kTileRows, bool kAccumulate>
inline void tile(int64_t K, const float* A, int64_t lda, int64_t step, const float* panel,
                 float* C, int64_t ldc) {
  // Fully unrolled row loops, so that the accumulators live in registers, not on the stack.
  __m256 lo[kTileRows], hi[kTileRows];
#pragma GCC unroll 4
  for (int r = 0; r < kTileRows; ++r) {
    lo[r] = kAccumulate ? _mm256_loadu_ps(C + r * ldc) : _mm256_setzero_ps();
    hi[r] = kAccumulate ? _mm256_loadu_ps(C + r * ldc + 8) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k, A += step) {
    const __m256 p_lo = _mm256_load_ps(panel + k * kPanel);
    const __m256 p_hi = _mm256_load_ps(panel + k * kPanel + 8);
#pragma GCC unroll 4
    for (int r = 0; r < kTileRows; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda);
      lo[r] = _mm256_fmadd_ps(a, p_lo, lo[r]);
      hi[r] = _mm256_fmadd_ps(a, p_hi, hi[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kTileRows; ++r) {
    _mm256_storeu_ps(C + r * ldc, lo[r]);
    _mm256_storeu_ps(C + r * ldc + 8, hi[r]);
  }
}

template <bool kAccumulate>
inline void tile_rows(int64_t rows, int64_t K, const float* A, int64_t lda, int64_t step,
                      const float* panel, float* C, int64_t ldc) {
  switch (rows) {
    case 4: return tile<4, kAccumulate>(K, A, lda, step, panel, C, ldc);
    case 3: return tile<3, kAccumulate>(K, A, lda, step, panel, C, ldc);
    case 2: return tile<2, kAccumulate>(K, A, lda, step, panel, C, ldc);
    default: return tile<1, kAccumulate>(K, A, lda, step, panel, C, ldc);
  }
}

// One tile whose panel may be narrower than 16 columns (the last one when N % 16 != 0): the
// padded columns are computed into a scratch tile and dropped.
inline void tile_any(int64_t rows, int64_t width, bool accumulate, int64_t K, const float* A,
                     int64_t lda, int64_t step, const float* panel, float* C, int64_t ldc) {
  if (width == kPanel) {
    if (accumulate) return tile_rows<true>(rows, K, A, lda, step, panel, C, ldc);
    return tile_rows<false>(rows, K, A, lda, step, panel, C, ldc);
  }
  alignas(32) float scratch[kRows * kPanel] = {};
  for (int64_t r = 0; r < rows && accumulate; ++r) std::copy_n(C + r * ldc, width, scratch + r * kPanel);
  if (accumulate) {
    tile_rows<true>(rows, K, A, lda, step, panel, scratch, kPanel);
  } else {
    tile_rows<false>(rows, K, A, lda, step, panel, scratch, kPanel);
  }
  for (int64_t r = 0; r < rows; ++r) std::copy_n(scratch + r * kPanel, width, C + r * ldc);
}

// C (M×N) (+)= A (M×K, A(m, k) = A[m·lda + k·step]) · the packed panels [N/16][K][16].
inline void multiply(int64_t M, int64_t K, int64_t N, const float* A, int64_t lda, int64_t step,
                     const float* panels, float* C, int64_t ldc, bool accumulate) {
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
      const float* panel = panels + (n0 * K + k0 * kPanel);
      const int64_t width = std::min(kPanel, N - n0);
      for (int64_t m = 0; m < M; m += kRows) {
        tile_any(std::min(kRows, M - m), width, acc, depth, A + m * lda + k0 * step, lda, step,
                 panel, C + m * ldc + n0, ldc);
      }
    }
  }
}

}  // namespace grulm::avx2

#endif
