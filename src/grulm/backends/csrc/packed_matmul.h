// Small matrix products for the GRU time loop: C (M×N) = A (M×K) · P, or C += A · P.
//
// Every step multiplies a few rows (one thread's share of the batch) by the same weight matrix
// P. A BLAS call repacks P on every call and pays a dispatch each time, which on the step's
// shapes (16–32 rows, K = H) is a large part of the product's cost. So P is packed ONCE per
// forward (or backward) into panels of 16 columns, [panel][k][16], and a 4×16 register tile
// (8 AVX2 accumulators, FMA) walks the rows against each panel while it sits in L1.
//
// Without AVX2/FMA in the build, and for float64 (used by the parity tests), the product is an
// ATen matmul on views of the same memory instead.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GRULM_PACKED_AVX2 1
#endif

namespace grulm {

#ifdef GRULM_PACKED_AVX2
namespace detail {

constexpr int64_t kPanel = 16;  // columns per panel: two 8-float registers
constexpr int64_t kRows = 4;  // rows per register tile
constexpr int64_t kDepth = 256;  // K per pass, so that a panel (16 KiB) stays in L1

// C[r, 0:16] (+)= sum_k A[r·lda + k·step] · panel[k, 0:16] for r < kTileRows.
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

}  // namespace detail
#endif

// A K×N right-hand side, fixed while many left-hand sides are multiplied by it.
//
// Built from a 2-D (K, N) view of any strides (e.g. ``weight.t()``); the view's memory must
// outlive this object. ``pack`` must run (split over a team's threads if wanted) before
// ``multiply``.
template <typename scalar_t>
class PackedMatrix {
 public:
  explicit PackedMatrix(const at::Tensor& rhs) : rhs_(rhs), K_(rhs.size(0)), N_(rhs.size(1)) {
#ifdef GRULM_PACKED_AVX2
    if constexpr (kPacked) {
      const int64_t panels = (N_ + detail::kPanel - 1) / detail::kPanel;
      panels_ = at::empty({panels, K_, detail::kPanel}, rhs.options());  // 64-byte aligned
    }
#endif
  }

  // Packs panels part, part + parts, part + 2·parts, ... (every panel for part 0 of 1).
  void pack(int part, int parts) {
#ifdef GRULM_PACKED_AVX2
    if constexpr (kPacked) {
      const float* src = rhs_.data_ptr<float>();
      const int64_t ks = rhs_.stride(0), ns = rhs_.stride(1);
      float* dst = panels_.data_ptr<float>();
      // Read along the source's contiguous dimension: a panel (16 KiB at K = 256) stays in
      // L1 while it fills either way.
      for (int64_t p = part; p < panels_.size(0); p += parts) {
        float* panel = dst + p * K_ * detail::kPanel;
        const int64_t n0 = p * detail::kPanel, width = std::min(detail::kPanel, N_ - n0);
        if (ks == 1) {
          for (int64_t j = 0; j < detail::kPanel; ++j) {
            const float* column = j < width ? src + (n0 + j) * ns : nullptr;
            for (int64_t k = 0; k < K_; ++k) {
              panel[k * detail::kPanel + j] = column != nullptr ? column[k] : 0.0f;
            }
          }
        } else {
          for (int64_t k = 0; k < K_; ++k) {
            for (int64_t j = 0; j < detail::kPanel; ++j) {
              panel[k * detail::kPanel + j] = j < width ? src[k * ks + (n0 + j) * ns] : 0.0f;
            }
          }
        }
      }
    }
#endif
  }

  // C (M×N, row stride ldc) = A · P, or C += A · P if ``accumulate``, where A is M×K with
  // A(m, k) = A[m·lda + k·step]: rows of a matrix (step 1) or columns of one (lda 1), as x^T
  // in the head's weight gradient.
  void multiply(int64_t M, const scalar_t* A, int64_t lda, scalar_t* C, int64_t ldc,
                bool accumulate, int64_t step = 1) const {
    if (M == 0) return;
#ifdef GRULM_PACKED_AVX2
    if constexpr (kPacked) {
      using namespace detail;
      const float* panels = panels_.data_ptr<float>();
      for (int64_t k0 = 0; k0 < K_; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, K_ - k0);
        const bool acc = accumulate || k0 > 0;
        for (int64_t n0 = 0; n0 < N_; n0 += kPanel) {
          const float* panel = panels + (n0 * K_ + k0 * kPanel);
          const int64_t width = std::min(kPanel, N_ - n0);
          for (int64_t m = 0; m < M; m += kRows) {
            tile_any(std::min(kRows, M - m), width, acc, depth, A + m * lda + k0 * step, lda,
                     step, panel, C + m * ldc + n0, ldc);
          }
        }
      }
      return;
    }
#endif
    const auto options = rhs_.options();
    const at::Tensor a = at::from_blob(const_cast<scalar_t*>(A), {M, K_}, {lda, step}, options);
    at::Tensor c = at::from_blob(C, {M, N_}, {ldc, 1}, options);
    if (accumulate) {
      at::addmm_out(c, c, a, rhs_);
    } else {
      at::mm_out(c, a, rhs_);
    }
  }

 private:
#ifdef GRULM_PACKED_AVX2
  static constexpr bool kPacked = std::is_same_v<scalar_t, float>;
  at::Tensor panels_;
#endif
  at::Tensor rhs_;
  int64_t K_, N_;
};

}  // namespace grulm
