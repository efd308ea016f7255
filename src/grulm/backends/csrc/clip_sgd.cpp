// Gradient clipping and a plain SGD step, fused: the seed's update as one call and two passes
// over memory.
//
//   norm  = ‖(g_1, …, g_n)‖₂ over every gradient (accumulated in double)
//   scale = min(1, max_norm / norm)   (NaN when norm is NaN, so that a diverged step shows)
//   g_i  ← scale · g_i,   p_i ← p_i − lr_i · g_i
//
// which is what clipping by the global norm followed by torch.optim.SGD (no momentum, no
// weight decay) computes. Unfused that is a dozen or more ATen calls through two Python
// layers per step (per-tensor norms, a stack, a norm, a clamp, a multi-tensor multiply, the
// optimiser's bookkeeping and a multi-tensor add), each paying its dispatch and its own pass
// over memory; the seed's steps are small enough for that overhead to show.

#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "team.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t kGrain = 1 << 15;  // elements per thread at least: small steps use one

void check_lists(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 const std::vector<double>& lrs) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == lrs.size(),
              "grulm clip_sgd_: params, grads and lrs must have the same length");
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    const Tensor& g = grads[i];
    TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu(),
                "grulm clip_sgd_: tensors must be on the CPU");
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble,
                "grulm clip_sgd_: float32 or float64 only, got ", p.scalar_type());
    TORCH_CHECK(g.scalar_type() == p.scalar_type() && g.sizes() == p.sizes(),
                "grulm clip_sgd_: every gradient must match its parameter's shape and dtype");
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && !g.is_sparse(),
                "grulm clip_sgd_: parameters and gradients must be dense and contiguous");
  }
}

// Thread k of n's share of a tensor of `size` elements.
std::pair<int64_t, int64_t> share(int64_t size, int k, int n) {
  return {size * k / n, size * (k + 1) / n};
}

template <typename scalar_t>
double sum_of_squares(const Tensor& g, int k, int n) {
  const scalar_t* __restrict__ data = g.data_ptr<scalar_t>();
  const auto [begin, end] = share(g.numel(), k, n);
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = begin; i < end; ++i) {
    sum += static_cast<double>(data[i]) * static_cast<double>(data[i]);
  }
  return sum;
}

template <typename scalar_t>
void update(const Tensor& p, const Tensor& g, scalar_t scale, scalar_t step, int k, int n) {
  scalar_t* __restrict__ pd = p.data_ptr<scalar_t>();
  scalar_t* __restrict__ gd = g.data_ptr<scalar_t>();
  const auto [begin, end] = share(p.numel(), k, n);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    gd[i] *= scale;
    pd[i] -= step * gd[i];
  }
}

// Clips grads to global norm max_norm, then params[i] -= lrs[i] · grads[i], all in place.
// One OpenMP team does both passes, each thread on its share of every tensor, with one
// barrier between them (not a parallel region per tensor and pass: waking a team costs more
// than these passes over a small model).
// Returns the norm before clipping, 0-dim, in the gradients' dtype (float32 if there are none).
Tensor clip_sgd(at::TensorList params_in, at::TensorList grads_in, at::ArrayRef<double> lrs_in,
                double max_norm) {
  const std::vector<Tensor> params = params_in.vec(), grads = grads_in.vec();
  const std::vector<double> lrs = lrs_in.vec();
  check_lists(params, grads, lrs);
  int64_t total_size = 0;
  for (const Tensor& g : grads) total_size += g.numel();
  const int n = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), total_size / kGrain)));
  std::vector<double> partial(n, 0.0);
  double norm = 0.0;
  grulm::TeamErrors errors;
  auto team = [&] {
    const int k = omp_get_thread_num(), parts = omp_get_num_threads();
    errors.run([&] {
      for (const Tensor& g : grads) {
        grulm::dispatch_floating(g.scalar_type(), [&](auto zero) {
          partial[k] += sum_of_squares<decltype(zero)>(g, k, parts);
        });
      }
    });
#pragma omp barrier
    double total = 0.0;
    for (double part : partial) total += part;  // the same order in every thread
    const double norm_k = std::sqrt(total);
    const double scale =
        std::isnan(norm_k) ? norm_k : (norm_k > max_norm ? max_norm / norm_k : 1.0);
    if (k == 0) norm = norm_k;
    errors.run([&] {
      for (size_t i = 0; i < params.size(); ++i) {
        grulm::dispatch_floating(params[i].scalar_type(), [&](auto zero) {
          using scalar_t = decltype(zero);
          update<scalar_t>(params[i], grads[i], static_cast<scalar_t>(scale),
                           static_cast<scalar_t>(lrs[i]), k, parts);
        });
      }
    });
  };
  grulm::in_team(n, team);
  errors.rethrow();
  const auto dtype = grads.empty() ? at::kFloat : grads.front().scalar_type();
  return at::scalar_tensor(norm, at::TensorOptions().dtype(dtype));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def("clip_sgd_(Tensor(a!)[] params, Tensor(b!)[] grads, float[] lrs, float max_norm) -> "
        "Tensor");
  m.impl("clip_sgd_", c10::DispatchKey::CPU, &clip_sgd);
}
