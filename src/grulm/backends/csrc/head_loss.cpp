// The output head and the training loss, fused: the mean cross-entropy of
// softmax(x W^T + b) against the targets, and its gradients.
//
// A language model's head runs on every one of a batch's B·T positions. Unfused it is three
// ATen products on shapes BLAS handles poorly (one side is the vocabulary, 28 wide for the
// seed's characters) plus a log-softmax, an NLL loss, their backwards and a copy, a large
// share of a small model's step. Fused, the team splits the M = B·T rows: each thread multiplies
// its rows by W^T (packed once, see packed_matmul.h), takes every row's softmax and loss in
// one pass and keeps the probabilities; the backward forms dlogits = (P - onehot) / M on its
// rows, dx = dlogits W for them, and its part of dW^T = x^T dlogits and db, summed at the end.

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "activations.h"
#include "block_pool.h"
#include "packed_matmul.h"
#include "team.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using grulm::PackedMatrix;
using grulm::Rows;
using grulm::rows_of;
using grulm::TeamErrors;

// PyTorch's thread count, but one thread unless each gets at least 2^16 multiply-adds of the
// forward product (M·V·H): small calls (generation, one step at a time) are not worth a team.
int team_size(int64_t M, int64_t V, int64_t H) {
  const int64_t by_work = M * V * H >> 16;
  return static_cast<int>(
      std::max<int64_t>(1, std::min({int64_t{at::get_num_threads()}, M, by_work})));
}

void check_head(const Tensor& x, const Tensor& weight, const Tensor& bias,
                const Tensor& targets) {
  TORCH_CHECK(x.device().is_cpu(), "grulm head loss: tensors must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "grulm head loss: float32 or float64 only, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0, "grulm head loss: x must be (M, H) with M > 0");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1) &&
                  weight.scalar_type() == x.scalar_type(),
              "grulm head loss: weight must be (V, H) of x's dtype");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0) &&
                  bias.scalar_type() == x.scalar_type(),
              "grulm head loss: bias must be (V,) of x's dtype");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.dim() == 1 &&
                  targets.size(0) == x.size(0),
              "grulm head loss: targets must be (M,) int64");
  const auto [lo, hi] = at::aminmax(targets);
  TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < weight.size(0),
              "grulm head loss: target out of range [0, ", weight.size(0), ")");
}

// Turns rows [r0, r1) of logits (without bias) into probabilities in place; returns the sum of
// their losses, log Σ exp(l) − l[target].
template <typename scalar_t>
double softmax_rows(Rows rows, int64_t V, const scalar_t* __restrict__ bias,
                    const int64_t* __restrict__ targets, scalar_t* __restrict__ logits) {
  double loss = 0;
  for (int64_t r = rows.b0; r < rows.b1; ++r) {
    scalar_t* __restrict__ row = logits + r * V;
    scalar_t top = row[0] + bias[0];
    for (int64_t v = 0; v < V; ++v) {
      row[v] += bias[v];
      top = std::max(top, row[v]);
    }
    const scalar_t picked = row[targets[r]];
    scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) {
      row[v] = grulm::exp_(row[v] - top);
      sum += row[v];
    }
    const scalar_t scale = 1 / sum;
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) row[v] *= scale;
    loss += static_cast<double>(top) + std::log(static_cast<double>(sum)) - picked;
  }
  return loss;
}

// Forward. x (M, H), weight (V, H), bias (V,), targets (M,) int64 in [0, V).
// Returns the mean loss (0-dim) and the probabilities (M, V) for the backward.
std::tuple<Tensor, Tensor> head_loss_forward(const Tensor& x_in, const Tensor& weight_in,
                                             const Tensor& bias_in, const Tensor& targets_in) {
  check_head(x_in, weight_in, bias_in, targets_in);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto x = x_in.contiguous();
  const auto weight = weight_in.contiguous();
  const auto bias = bias_in.contiguous();
  const auto targets = targets_in.contiguous();
  const int64_t M = x.size(0), H = x.size(1), V = weight.size(0);
  auto probs = at::empty({M, V}, x.options());
  const int n = team_size(M, V, H);
  std::vector<double> losses(n, 0.0);
  TeamErrors errors;

  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    PackedMatrix<scalar_t> w_t(weight.t());  // (H, V)
    auto team = [&] {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;
      const int k = omp_get_thread_num(), parts = omp_get_num_threads();
      errors.run([&] { w_t.pack(k, parts); });
#pragma omp barrier
      errors.run([&] {
        const Rows rows = rows_of(M, k, parts);
        scalar_t* p = probs.data_ptr<scalar_t>();
        w_t.multiply(rows.count(), x.data_ptr<scalar_t>() + rows.b0 * H, H, p + rows.b0 * V, V,
                     false);
        losses[k] = softmax_rows(rows, V, bias.data_ptr<scalar_t>(),
                                 targets.data_ptr<int64_t>(), p);
      });
    };
    grulm::in_team(n, team);
  };
  grulm::dispatch_floating(x.scalar_type(), run);
  errors.rethrow();
  double total = 0;
  for (double part : losses) total += part;
  return {at::scalar_tensor(total / M, x.options()), probs};
}

// Backward. grad_loss (0-dim); x, weight, probs, targets as in and from the forward.
// Returns dx (M, H), d_weight (V, H), d_bias (V,).
std::tuple<Tensor, Tensor, Tensor> head_loss_backward(const Tensor& grad_loss,
                                                      const Tensor& x_in,
                                                      const Tensor& weight_in,
                                                      const Tensor& probs,
                                                      const Tensor& targets_in) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto x = x_in.contiguous();
  const auto weight = weight_in.contiguous();
  const auto targets = targets_in.contiguous();
  const int64_t M = x.size(0), H = x.size(1), V = weight.size(0);
  const double scale = grad_loss.item<double>() / M;
  auto d_x = grulm::pooled_empty({M, H}, x.options());
  const int n = team_size(M, V, H);
  // Every thread's share of dW^T (H, V) and db (V,), summed after the team.
  auto d_weight_t = at::empty({n, H, V}, x.options());
  auto d_bias = at::zeros({n, V}, x.options());
  TeamErrors errors;

  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    PackedMatrix<scalar_t> w(weight);  // (V, H)
    auto team = [&] {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;
      const int k = omp_get_thread_num(), parts = omp_get_num_threads();
      errors.run([&] { w.pack(k, parts); });
#pragma omp barrier
      errors.run([&] {
        const Rows rows = rows_of(M, k, parts);
        const int64_t m = rows.count();
        // dlogits = (P − onehot(target)) · grad / M for this thread's rows, and their sum.
        Tensor d_logits = at::empty({m, V}, x.options());
        scalar_t* dl = d_logits.data_ptr<scalar_t>();
        const scalar_t* p = probs.data_ptr<scalar_t>() + rows.b0 * V;
        const int64_t* t = targets.data_ptr<int64_t>() + rows.b0;
        scalar_t* db = d_bias[k].data_ptr<scalar_t>();
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t v = 0; v < V; ++v) {
            dl[r * V + v] = (p[r * V + v] - (v == t[r] ? 1 : 0)) * static_cast<scalar_t>(scale);
            db[v] += dl[r * V + v];
          }
        }
        w.multiply(m, dl, V, d_x.data_ptr<scalar_t>() + rows.b0 * H, H, false);
        // dW^T (H, V) over these rows = x_rows^T dlogits: x read down its columns.
        PackedMatrix<scalar_t> d_logits_packed(d_logits);
        d_logits_packed.pack(0, 1);
        d_logits_packed.multiply(H, x.data_ptr<scalar_t>() + rows.b0 * H, 1,
                                 d_weight_t[k].data_ptr<scalar_t>(), V, false, H);
      });
    };
    grulm::in_team(n, team);
  };
  grulm::dispatch_floating(x.scalar_type(), run);
  errors.rethrow();
  return {d_x, d_weight_t.sum(0).t().contiguous(), d_bias.sum(0)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def("head_loss_forward(Tensor x, Tensor weight, Tensor bias, Tensor targets) -> "
        "(Tensor, Tensor)");
  m.def("head_loss_backward(Tensor grad_loss, Tensor x, Tensor weight, Tensor probs, "
        "Tensor targets) -> (Tensor, Tensor, Tensor)");
  m.impl("head_loss_forward", c10::DispatchKey::CPU, &head_loss_forward);
  m.impl("head_loss_backward", c10::DispatchKey::CPU, &head_loss_backward);
}
