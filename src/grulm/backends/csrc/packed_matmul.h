// Small matrix products for the GRU time loop: C (M×N) = A (M×K) · P, or C += A · P.
//
// Every step multiplies a few rows (one thread's share of the batch) by the same weight matrix
// P. A BLAS call repacks P on every call and pays a dispatch each time, which on the step's
// shapes (16–32 rows, K = H) is a large part of the product's cost. So P is packed ONCE per
// forward (or backward) into panels of a few columns, [panel][k][columns], and a register tile
// walks the rows against each panel while it sits in L1. The tile is the one of the path the
// process uses (isa.h): AVX2/FMA 4×16 (packed_avx2.h) or AVX-512 8×32 (packed_avx512.h); both
// add the products of an output element in the same order, so they give the same bits. On the
// `generic` path, and for float64 (used by the parity tests), the product is an ATen matmul on
// views of the same memory instead.
//
// bf16 precision: both operands are rounded to bfloat16 and the products accumulate in
// float32. With AVX512-BF16, P is packed as bf16 pairs along K and A's rows are converted to
// bf16 pairs once per product, for vdpbf16ps; elsewhere the rounded values are kept in float32
// and go through the float32 tile (the same arithmetic, emulated, at float32 speed).

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bf16.h"
#include "block_pool.h"
#include "isa.h"
#include "packed_avx2.h"
#include "packed_avx512.h"

namespace grulm {

namespace detail {

// Columns [n0, n0 + width) of the K×N matrix src (strides ks, ns) as a float32 panel [K][P],
// zero beyond `width`, each value rounded to bf16 if `round`. Reads along the source's
// contiguous dimension: a panel stays in L1 while it fills either way.
inline void pack_panel(const float* src, int64_t ks, int64_t ns, int64_t K, int64_t n0,
                       int64_t width, int64_t P, bool round, float* panel) {
  auto value = [round](float v) { return round ? round_bf16(v) : v; };
  if (ks == 1) {
    for (int64_t j = 0; j < P; ++j) {
      const float* column = j < width ? src + (n0 + j) * ns : nullptr;
      for (int64_t k = 0; k < K; ++k) panel[k * P + j] = column ? value(column[k]) : 0.0f;
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t j = 0; j < P; ++j) {
        panel[k * P + j] = j < width ? value(src[k * ks + (n0 + j) * ns]) : 0.0f;
      }
    }
  }
}

// The same columns as a bf16 panel of K pairs [K/2][P][2] (an odd K padded with a zero row).
inline void pack_panel_bf16(const float* src, int64_t ks, int64_t ns, int64_t K, int64_t n0,
                            int64_t width, int64_t P, uint16_t* panel) {
  const int64_t pairs = (K + 1) / 2;
  if (width < P || K % 2 == 1) std::fill(panel, panel + pairs * P * 2, uint16_t{0});
  if (ks == 1) {
    for (int64_t j = 0; j < width; ++j) {
      const float* column = src + (n0 + j) * ns;
      for (int64_t k = 0; k < K; ++k) panel[((k >> 1) * P + j) * 2 + (k & 1)] = to_bf16(column[k]);
    }
    return;
  }
  // Two source rows at a time, interleaved: the large products pack row-major gradients.
  for (int64_t i = 0; i < pairs; ++i) {
    const float* __restrict__ even = src + 2 * i * ks + n0 * ns;
    const float* __restrict__ odd = even + ks;
    uint16_t* __restrict__ out = panel + i * P * 2;
    if (2 * i + 1 == K) {
      for (int64_t j = 0; j < width; ++j) out[2 * j] = to_bf16(even[j * ns]);
    } else if (ns == 1) {
      for (int64_t j = 0; j < width; ++j) {
        out[2 * j] = to_bf16(even[j]);
        out[2 * j + 1] = to_bf16(odd[j]);
      }
    } else {
      for (int64_t j = 0; j < width; ++j) {
        out[2 * j] = to_bf16(even[j * ns]);
        out[2 * j + 1] = to_bf16(odd[j * ns]);
      }
    }
  }
}

}  // namespace detail

// A K×N right-hand side, fixed while many left-hand sides are multiplied by it.
//
// Built from a 2-D (K, N) view of any strides (e.g. ``weight.t()``); the view's memory must
// outlive this object. ``pack`` must run (split over a team's threads if wanted) before
// ``multiply``. With ``bf16``, every product rounds both operands to bfloat16 (float32 only).
template <typename scalar_t>
class PackedMatrix {
 public:
  explicit PackedMatrix(const at::Tensor& rhs, bool bf16 = false)
      : rhs_(rhs), K_(rhs.size(0)), N_(rhs.size(1)), bf16_(bf16), kernel_(kernel_for(bf16)) {
    TORCH_CHECK(!bf16 || (std::is_same_v<scalar_t, float>),
                "grulm cpu backend: bf16 precision needs float32 tensors");
    const auto options = rhs.options();
    switch (kernel_) {
      case Kernel::kAten:
        if (bf16_) rhs_ = rhs.to(at::kBFloat16).to(at::kFloat);
        break;
      case Kernel::kAvx2:
        panels_ = pooled_empty({panels(), K_, panel_width()}, options);  // 64-byte aligned
        break;
      case Kernel::kAvx512:
        panels_ = pooled_empty({panels(), K_, panel_width()}, options);
        break;
      case Kernel::kAvx512Bf16:
        panels_ = pooled_empty({panels(), pairs(), panel_width() * 2}, options.dtype(at::kBFloat16));
        break;
    }
  }

  // Packs panels part, part + parts, part + 2·parts, ... (every panel for part 0 of 1).
  void pack(int part, int parts) {
    if (kernel_ == Kernel::kAten) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      const float* src = rhs_.data_ptr<float>();
      const int64_t ks = rhs_.stride(0), ns = rhs_.stride(1), P = panel_width();
      for (int64_t p = part; p < panels(); p += parts) {
        const int64_t n0 = p * P, width = std::min(P, N_ - n0);
        if (kernel_ == Kernel::kAvx512Bf16) {
          uint16_t* dst = reinterpret_cast<uint16_t*>(panels_.data_ptr()) + p * pairs() * P * 2;
          detail::pack_panel_bf16(src, ks, ns, K_, n0, width, P, dst);
        } else {
          float* dst = panels_.data_ptr<float>() + p * K_ * P;
          detail::pack_panel(src, ks, ns, K_, n0, width, P, bf16_, dst);
        }
      }
    }
  }

  // C (M×N, row stride ldc) = A · P, or C += A · P if ``accumulate``, where A is M×K with
  // A(m, k) = A[m·lda + k·step]: rows of a matrix (step 1) or columns of one (lda 1), as x^T
  // in the head's weight gradient. With bf16, A's rows are rounded first (into a per-thread
  // buffer), once per call.
  void multiply(int64_t M, const scalar_t* A, int64_t lda, scalar_t* C, int64_t ldc,
                bool accumulate, int64_t step = 1) const {
    if (M == 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (kernel_ == Kernel::kAvx512Bf16) {
        std::vector<uint16_t>& a = bf16_rows();
        const int64_t width = 2 * pairs();
        a.assign(M * width, 0);
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t k = 0; k < K_; ++k) a[m * width + k] = to_bf16(A[m * lda + k * step]);
        }
        return multiply_pairs(M, a.data(), width, C, ldc, accumulate);
      }
      if (bf16_) {
        std::vector<float>& a = rounded_rows();
        a.resize(M * K_);
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t k = 0; k < K_; ++k) a[m * K_ + k] = round_bf16(A[m * lda + k * step]);
        }
        A = a.data(), lda = K_, step = 1;
      }
#ifdef GRULM_PACKED_AVX2
      if (kernel_ == Kernel::kAvx2) {
        return avx2::multiply(M, K_, N_, A, lda, step, panels_.data_ptr<float>(), C, ldc,
                              accumulate);
      }
#endif
#ifdef GRULM_PACKED_AVX512
      if (kernel_ == Kernel::kAvx512) {
        return avx512::multiply(M, K_, N_, A, lda, step, panels_.data_ptr<float>(), C, ldc,
                                accumulate);
      }
#endif
    }
    const auto options = rhs_.options();
    const at::Tensor a = at::from_blob(const_cast<scalar_t*>(A), {M, K_}, {lda, step}, options);
    at::Tensor c = at::from_blob(C, {M, N_}, {ldc, 1}, options);
    if (accumulate) {
      at::addmm_out(c, c, a, rhs_);
    } else {
      at::mm_out(c, a, rhs_);
    }
  }

  // Whether products run on bf16 operands natively (vdpbf16ps), so that multiply_pairs works.
  bool native_bf16() const { return kernel_ == Kernel::kAvx512Bf16; }

  // C (+)= A · P for A already in bf16 pairs: M rows of ⌈K/2⌉ pairs, row stride lda elements,
  // an odd K padded with a zero. Only where native_bf16().
  void multiply_pairs(int64_t M, const uint16_t* A, int64_t lda, float* C, int64_t ldc,
                      bool accumulate) const {
    TORCH_CHECK(native_bf16(), "grulm cpu backend: no native bf16 products on this path");
#ifdef GRULM_PACKED_AVX512
    avx512::multiply_bf16(M, pairs(), N_, A, lda,
                          reinterpret_cast<const uint16_t*>(panels_.data_ptr()), C, ldc,
                          accumulate);
#endif
  }

 private:
  enum class Kernel { kAten, kAvx2, kAvx512, kAvx512Bf16 };

  static Kernel kernel_for(bool bf16) {
    if constexpr (!std::is_same_v<scalar_t, float>) return Kernel::kAten;
    switch (active_isa()) {
#ifdef GRULM_PACKED_AVX512
      case Isa::kAvx512Bf16: return bf16 ? Kernel::kAvx512Bf16 : Kernel::kAvx512;
      case Isa::kAvx512: return Kernel::kAvx512;
#endif
#ifdef GRULM_PACKED_AVX2
      case Isa::kAvx2: return Kernel::kAvx2;
#endif
      default: return Kernel::kAten;
    }
  }

  int64_t panel_width() const {
#ifdef GRULM_PACKED_AVX2
    if (kernel_ == Kernel::kAvx2) return avx2::kPanel;
#endif
#ifdef GRULM_PACKED_AVX512
    return avx512::kPanel;
#else
    return 1;
#endif
  }
  int64_t panels() const { return (N_ + panel_width() - 1) / panel_width(); }
  int64_t pairs() const { return (K_ + 1) / 2; }

  static std::vector<uint16_t>& bf16_rows() {
    static thread_local std::vector<uint16_t> rows;
    return rows;
  }
  static std::vector<float>& rounded_rows() {
    static thread_local std::vector<float> rows;
    return rows;
  }

  at::Tensor rhs_;
  int64_t K_, N_;
  bool bf16_;
  Kernel kernel_;
  at::Tensor panels_;
};

}  // namespace grulm
