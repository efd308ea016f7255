// Large matrix products in bf16 precision (the input projection of features, its gradients,
// and the weight gradients): C = A · B, or C += A · B, with both operands rounded to bfloat16
// and the products accumulated in float32, the output kept in float32 (a bf16 BLAS call would
// round its output to bf16 as well).
//
// With AVX512-BF16, B is packed into bf16 panels by the whole team, each thread converts its
// block of A's rows to bf16 pairs (round to nearest even) and multiplies them on the vdpbf16ps
// tile (packed_matmul.h), a few hundred rows at a time so that they stay
// in L2 while the panels stream past. Elsewhere the rounded operands go through ATen's float32
// product: the same arithmetic, at float32 speed.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "block_pool.h"
#include "packed_matmul.h"
#include "team.h"

namespace grulm {

namespace detail {

// Rows [r0, r1) of a (M×K float32, strides sm, sk) as bf16 pairs into out (row stride width =
// K rounded up to even, an odd K padded with a zero). A transposed a (sk ≠ 1, as the states in
// the weight gradients) is read row by row of its storage, one pair of K at a time, while the
// rows being written stay in L1.
inline void rows_to_bf16(const float* a, int64_t sm, int64_t sk, int64_t K, int64_t r0,
                         int64_t r1, int64_t width, uint16_t* out) {
  if (sk == 1) {
    for (int64_t m = r0; m < r1; ++m) {
      const float* __restrict__ src = a + m * sm;
      uint16_t* __restrict__ dst = out + m * width;
      for (int64_t k = 0; k < K; ++k) dst[k] = to_bf16(src[k]);
      if (width > K) dst[K] = 0;
    }
    return;
  }
  for (int64_t k = 0; k < K; k += 2) {
    const float* __restrict__ even = a + k * sk;
    const float* __restrict__ odd = k + 1 < K ? even + sk : nullptr;
    for (int64_t m = r0; m < r1; ++m) {
      out[m * width + k] = to_bf16(even[m * sm]);
      out[m * width + k + 1] = odd != nullptr ? to_bf16(odd[m * sm]) : uint16_t{0};
    }
  }
}

}  // namespace detail

// c (M×N float32, unit column stride) = a (M×K) · b (K×N), or += if `accumulate`; a and b
// float32 of any strides, rounded to bf16 on the way in.
inline void gemm_bf16(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate) {
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  c.scalar_type() == at::kFloat && c.stride(1) == 1,
              "grulm cpu backend: bf16 products take and give float32");
  const int64_t M = a.size(0), K = a.size(1);
  if (M == 0) return;
  if (K == 0) {
    if (!accumulate) c.zero_();
    return;
  }
  PackedMatrix<float> packed(b, /*bf16=*/true);
  if (!packed.native_bf16()) {
    const at::Tensor a_r = a.to(at::kBFloat16).to(at::kFloat);
    const at::Tensor b_r = b.to(at::kBFloat16).to(at::kFloat);
    if (accumulate) {
      at::addmm_out(c, c, a_r, b_r);
    } else {
      at::mm_out(c, a_r, b_r);
    }
    return;
  }
  const int64_t width = 2 * ((K + 1) / 2);  // an odd K padded with a zero column
  at::Tensor a16 = pooled_empty({M, width}, a.options().dtype(at::kBFloat16));
  uint16_t* a_ptr = reinterpret_cast<uint16_t*>(a16.data_ptr());
  const float* a_src = a.data_ptr<float>();
  float* c_ptr = c.data_ptr<float>();
  const int64_t ldc = c.stride(0);
  constexpr int64_t kTile = 8, kChunk = 256;  // rows per register tile; per pass over B
  const int64_t tiles = (M + kTile - 1) / kTile;
  const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles)));
  TeamErrors errors;
  in_team(n, [&] {
    const int k = omp_get_thread_num(), parts = omp_get_num_threads();
    const int64_t r0 = std::min(M, tiles * k / parts * kTile);
    const int64_t r1 = std::min(M, tiles * (k + 1) / parts * kTile);
    errors.run([&] {
      packed.pack(k, parts);
      detail::rows_to_bf16(a_src, a.stride(0), a.stride(1), K, r0, r1, width, a_ptr);
    });
#pragma omp barrier
    errors.run([&] {
      for (int64_t r = r0; r < r1; r += kChunk) {
        packed.multiply_pairs(std::min(kChunk, r1 - r), a_ptr + r * width, width, c_ptr + r * ldc,
                              ldc, accumulate);
      }
    });
  });
  errors.rethrow();
}

}  // namespace grulm
