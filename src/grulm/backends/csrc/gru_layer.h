// What the fused GRU layer's forward (gru_cpu.cpp) and backward (gru_cpu_backward.cpp) share:
// the thread team's size, the input checks, the step inputs (projected features or gathered
// rows of W_ih^T) and packing the step products' right-hand sides in the team.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>

#include "packed_matmul.h"
#include "team.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <utility>

namespace grulm::gru {

using at::Tensor;
using grulm::TeamErrors;

// The thread team: PyTorch's thread count, but at most one thread per batch row and per 2^20
// multiply-adds of the call's recurrent products (T·B·3H·H), so that a thread's share dwarfs
// the cost of starting the team. Small calls run on one thread.
inline int team_size(int64_t T, int64_t B, int64_t H) {
  const int64_t by_work = T * B * 3 * H * H >> 20;
  return static_cast<int>(
      std::max<int64_t>(1, std::min({int64_t{at::get_num_threads()}, B, by_work})));
}

inline void check_inputs(const Tensor& h0, const Tensor& weight_hh, bool bf16) {
  TORCH_CHECK(h0.device().is_cpu(), "grulm cpu backend: tensors must be on the CPU");
  TORCH_CHECK(h0.scalar_type() == at::kFloat || h0.scalar_type() == at::kDouble,
              "grulm cpu backend: float32 or float64 only, got ", h0.scalar_type());
  TORCH_CHECK(!bf16 || h0.scalar_type() == at::kFloat,
              "grulm cpu backend: bf16 precision is for float32 tensors, got ", h0.scalar_type());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 3 * weight_hh.size(1),
              "grulm cpu backend: weight_hh must be (3H, H)");
}

// The input of every step, x W_ih^T without bias, one (3H,) row per (t, b): read from the
// projected features xp (T, B, 3H), or, for one-hot input, the row of W_ih^T (V, 3H) that the
// token id selects (the product of a one-hot vector and a matrix is a row gather).
template <typename scalar_t>
struct StepInput {
  const scalar_t* xp;  // (T, B, 3H) or null
  const int64_t* ids;  // (T, B) or null
  const scalar_t* table;  // (V, 3H) or null
  int64_t B, H;

  const scalar_t* row(int64_t t, int64_t b) const {
    const int64_t r = t * B + b;
    return ids != nullptr ? table + ids[r] * 3 * H : xp + r * 3 * H;
  }
};

template <typename scalar_t>
StepInput<scalar_t> step_input(const Tensor& x, const Tensor& table, int64_t B, int64_t H) {
  if (x.scalar_type() == at::kLong) {
    return {nullptr, x.data_ptr<int64_t>(), table.data_ptr<scalar_t>(), B, H};
  }
  return {x.data_ptr<scalar_t>(), nullptr, nullptr, B, H};
}

// Checks x / table and returns them contiguous (table undefined for features).
inline std::pair<Tensor, Tensor> check_step_input(const Tensor& x, const c10::optional<Tensor>& table,
                                           const Tensor& h0) {
  const int64_t B = h0.size(0), H = h0.size(1);
  if (x.scalar_type() == at::kLong) {
    TORCH_CHECK(x.dim() == 2 && x.size(1) == B, "grulm cpu backend: ids must be (T, B)");
    TORCH_CHECK(table.has_value() && table->dim() == 2 && table->size(1) == 3 * H &&
                    table->scalar_type() == h0.scalar_type(),
                "grulm cpu backend: token ids need a (V, 3H) table of h0's dtype");
    const auto ids = x.contiguous();
    if (ids.numel() > 0) {
      const auto [lo, hi] = at::aminmax(ids);
      TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < table->size(0),
                  "grulm cpu backend: token id out of range [0, ", table->size(0), ")");
    }
    return {ids, table->contiguous()};
  }
  TORCH_CHECK(x.dim() == 3 && x.size(1) == B && x.size(2) == 3 * H &&
                  x.scalar_type() == h0.scalar_type(),
              "grulm cpu backend: xp must be (T, B, 3H) of h0's dtype");
  return {x.contiguous(), Tensor()};
}

// Packs the right-hand sides that are there with the whole team (panel by panel), then waits
// for all of them.
template <typename scalar_t>
void pack_together(std::initializer_list<std::optional<grulm::PackedMatrix<scalar_t>>*> matrices,
                   TeamErrors& errors) {
  errors.run([&] {
    for (auto* matrix : matrices) {
      if (*matrix) (*matrix)->pack(omp_get_thread_num(), omp_get_num_threads());
    }
  });
#pragma omp barrier
}

}  // namespace grulm::gru
