// Large matrix products in bf16 precision (the input projection of features, its gradients,
// and the weight gradients): C = A · B, or C += A · B, with both operands rounded to bfloat16
// and the products accumulated in float32, the output kept in float32 (a bf16 BLAS call would
// round its output to bf16 as well).
//
// With AVX512-BF16, A is converted to bf16 once (ATen's conversion, round to nearest even), B
// is packed into bf16 panels by the whole team, and each thread multiplies its block of A's
// rows on the vdpbf16ps tile (packed_matmul.h), a few hundred rows at a time so that they stay
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

#include "packed_matmul.h"
#include "team.h"

namespace grulm {

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
  at::Tensor a16 = at::empty({M, width}, a.options().dtype(at::kBFloat16));
  a16.narrow(1, 0, K).copy_(a);
  if (width > K) a16.narrow(1, K, 1).zero_();
  const uint16_t* a_ptr = reinterpret_cast<const uint16_t*>(a16.data_ptr());
  float* c_ptr = c.data_ptr<float>();
  const int64_t ldc = c.stride(0);
  constexpr int64_t kTile = 8, kChunk = 256;  // rows per register tile; per pass over B
  const int64_t tiles = (M + kTile - 1) / kTile;
  const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles)));
  TeamErrors errors;
  in_team(n, [&] {
    const int k = omp_get_thread_num(), parts = omp_get_num_threads();
    errors.run([&] { packed.pack(k, parts); });
#pragma omp barrier
    errors.run([&] {
      const int64_t r0 = std::min(M, tiles * k / parts * kTile);
      const int64_t r1 = std::min(M, tiles * (k + 1) / parts * kTile);
      for (int64_t r = r0; r < r1; r += kChunk) {
        packed.multiply_pairs(std::min(kChunk, r1 - r), a_ptr + r * width, width, c_ptr + r * ldc,
                              ldc, accumulate);
      }
    });
  });
  errors.rethrow();
}

}  // namespace grulm
