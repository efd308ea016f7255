// Large float32 matrix products (the input projection of features, its gradients, and the
// weight gradients): C = A · B, or C += A · B, on the register tiles of packed_matmul.h.
//
// Why not BLAS: on CPUs that PyTorch's BLAS is not tuned for (AMD's, for one), its float32
// product leaves much of the FMA units' throughput unused on these tall shapes; the tiles here,
// fed from blocks that stay in cache, keep them busier. The blocking is the classic one: K in
// slices, each slice of B packed into panels once by the whole team; each thread packs its own
// rows of A a block at a time into micro-panels (the rows a tile reads at one k side by side)
// and walks them against the panels. Every output element adds its K products in order of k,
// one FMA each, like every float32 path of the kernels, so the AVX2 and AVX-512 tiles give the
// same bits. On the generic path, for float64 and for products small enough to stay in cache
// the product is ATen's.

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
#include "isa.h"
#include "packed_matmul.h"
#include "team.h"

namespace grulm {

namespace detail {

// Rows [r0, r1) and columns [k0, k0 + depth) of a (strides sm, sk) as micro-panels of R
// rows, [tile][k][R] (a short last tile padded with zeros): the rows a register tile reads at
// one k lie side by side, so its loads of A walk memory in order.
inline void pack_rows(const float* a, int64_t sm, int64_t sk, int64_t r0, int64_t r1,
                      int64_t k0, int64_t depth, int64_t R, float* out) {
  for (int64_t t = r0; t < r1; t += R) {
    const int64_t rows = std::min(R, r1 - t);
    float* __restrict__ dst = out + (t - r0) * depth;
    if (sm == 1) {
      for (int64_t k = 0; k < depth; ++k) {
        const float* __restrict__ src = a + (k0 + k) * sk + t;
        for (int64_t r = 0; r < R; ++r) dst[k * R + r] = r < rows ? src[r] : 0.0f;
      }
    } else {
      for (int64_t r = 0; r < R; ++r) {
        const float* __restrict__ src = a + (t + r) * sm + k0 * sk;
        for (int64_t k = 0; k < depth; ++k) dst[k * R + r] = r < rows ? src[k * sk] : 0.0f;
      }
    }
  }
}

}  // namespace detail

// C (rows×N) (+)= the packed rows (micro-panels [tile][depth][R] from pack_rows) · the packed
// panels [N/P][depth][P], with the register tile of R rows and P columns, kDepth of k at a time.
template <int64_t R, int64_t P, int64_t kDepth, typename TileAny>
inline void multiply_packed(int64_t rows, int64_t depth, int64_t N, const float* a,
                            const float* panels, float* C, int64_t ldc, bool accumulate,
                            const TileAny& tile_any) {
  for (int64_t k0 = 0; k0 < depth; k0 += kDepth) {
    const int64_t d = std::min(kDepth, depth - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += P) {
      const float* panel = panels + n0 * depth + k0 * P;
      for (int64_t m = 0; m < rows; m += R) {
        tile_any(std::min(R, rows - m), std::min(P, N - n0), acc, d, a + m * depth + k0 * R,
                 panel, C + m * ldc + n0, ldc);
      }
    }
  }
}

// Whether gemm_f32 runs on grulm's tiles on this path (else it is ATen's product).
inline bool gemm_f32_native() {
  const Isa isa = active_isa();
#ifdef GRULM_PACKED_AVX512
  if (isa == Isa::kAvx512 || isa == Isa::kAvx512Bf16) return true;
#endif
#ifdef GRULM_PACKED_AVX2
  if (isa == Isa::kAvx2) return true;
#endif
  return false;
}

// Products of fewer multiply-adds than this fit in cache, where BLAS does well: they stay
// ATen's. Those of the large model (billions) stream, and run on the tiles.
constexpr int64_t kTiledMin = int64_t{1} << 28;

// c (M×N, unit column stride) = a (M×K) · b (K×N), or += if `accumulate`; a and b of any
// strides. Float32 from kTiledMin multiply-adds up on grulm's tiles where gemm_f32_native();
// else, and for float64, ATen's.
inline void gemm_f32(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate) {
  TORCH_CHECK(c.stride(1) == 1, "grulm cpu backend: the product's output needs unit column stride");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (M == 0 || N == 0) return;
  if (a.scalar_type() != at::kFloat || !gemm_f32_native() || M * K * N < kTiledMin) {
    if (accumulate) {
      at::addmm_out(c, c, a, b);
    } else {
      at::mm_out(c, a, b);
    }
    return;
  }
  // A slice of B (512 × N) is packed while the rows of A go past it 64 at a time, so that a
  // block of packed A rows (128 KiB) and the panel it meets stay in L2.
  constexpr int64_t kSlice = 512, kRowBlock = 64;
  const bool wide = active_isa() != Isa::kAvx2;
#ifdef GRULM_PACKED_AVX512
  const int64_t P = wide ? avx512::kPanel : 16;
  const int64_t tile_rows = wide ? avx512::kRows : 4;
#else
  const int64_t P = 16, tile_rows = 4;
#endif
  const int64_t panels = (N + P - 1) / P, slice = std::min(kSlice, K);
  const int64_t tiles = (M + tile_rows - 1) / tile_rows;
  // At kTiledMin multiply-adds every thread's share dwarfs starting the team.
  const int n = static_cast<int>(std::min<int64_t>(at::get_num_threads(), tiles));
  at::Tensor packed = pooled_empty({panels * slice * P}, a.options());
  at::Tensor a_blocks = pooled_empty({n * kRowBlock * slice}, a.options());
  const float* a_ptr = a.data_ptr<float>();
  const float* b_ptr = b.data_ptr<float>();
  float* p_ptr = packed.data_ptr<float>();
  float* c_ptr = c.data_ptr<float>();
  const int64_t sm = a.stride(0), sk = a.stride(1), ldc = c.stride(0);
  TeamErrors errors;
  in_team(n, [&] {
    const int part = omp_get_thread_num(), parts = omp_get_num_threads();
    const int64_t r0 = std::min(M, tiles * part / parts * tile_rows);
    const int64_t r1 = std::min(M, tiles * (part + 1) / parts * tile_rows);
    float* block = a_blocks.data_ptr<float>() + part * kRowBlock * slice;
    for (int64_t k0 = 0; k0 < K; k0 += slice) {
      const int64_t depth = std::min(slice, K - k0);
      errors.run([&] {
        for (int64_t p = part; p < panels; p += parts) {
          const int64_t n0 = p * P;
          detail::pack_panel(b_ptr + k0 * b.stride(0), b.stride(0), b.stride(1), depth, n0,
                             std::min(P, N - n0), P, false, p_ptr + p * depth * P);
        }
      });
#pragma omp barrier
      errors.run([&] {
        const bool acc = accumulate || k0 > 0;
        for (int64_t r = r0; r < r1; r += kRowBlock) {
          const int64_t rows = std::min(kRowBlock, r1 - r);
          float* c_rows = c_ptr + r * ldc;
          detail::pack_rows(a_ptr, sm, sk, r, r + rows, k0, depth, tile_rows, block);
#ifdef GRULM_PACKED_AVX512
          if (wide) {
            multiply_packed<avx512::kRows, avx512::kPanel, avx512::kDepth>(
                rows, depth, N, block, p_ptr, c_rows, ldc, acc,
                [](int64_t m, int64_t w, bool acc, int64_t d, const float* a, const float* panel,
                   float* c, int64_t ldc) {
                  avx512::tile_any(m, w, acc, avx512::F32Tile{d, a, 1, avx512::kRows, panel}, c,
                                   ldc);
                });
            continue;
          }
#endif
#ifdef GRULM_PACKED_AVX2
          multiply_packed<avx2::kRows, avx2::kPanel, avx2::kDepth>(
              rows, depth, N, block, p_ptr, c_rows, ldc, acc,
              [](int64_t m, int64_t w, bool acc, int64_t d, const float* a, const float* panel,
                 float* c, int64_t ldc) {
                avx2::tile_any(m, w, acc, d, a, 1, avx2::kRows, panel, c, ldc);
              });
#endif
        }
      });
      // The next slice's panels overwrite these: every thread must be done with them.
#pragma omp barrier
    }
  });
  errors.rethrow();
}

}  // namespace grulm
