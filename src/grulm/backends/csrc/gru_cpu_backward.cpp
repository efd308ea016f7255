// The fused GRU layer's hand-written backward through time (the forward and the layout of
// what it saves are in gru_cpu.cpp): per step, each thread walks its block of batch rows in
// reverse, one product for dh (two for reset-before) and one fused elementwise pass; the weight
// gradients are formed once, over all T·B rows, after the loop.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include "block_pool.h"
#include "gemm_bf16.h"
#include "gemm_f32.h"
#include "gru_layer.h"
#include "packed_matmul.h"
#include "team.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

namespace grulm::gru {
namespace {

// ---- Backward --------------------------------------------------------------------------------

// Reset-after, rows [b0, b1) of step t. dh = dL/dh_{t+1} = grad_out + carry.
// Writes d_xp = [dR, dZ, dH~] pre-activation gradients, d_gh = [dR, dZ, dH~ ⊙ R] (what the
// hidden products receive), and carry = dh ⊙ Z (h_t's direct path).
template <typename scalar_t>
void backward_after_rows(Rows rows, int64_t H, const scalar_t* __restrict__ gates,
                         const scalar_t* __restrict__ hn, const scalar_t* __restrict__ h,
                         const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ carry,
                         scalar_t* __restrict__ d_xp, scalar_t* __restrict__ d_gh) {
  for (int64_t b = rows.b0; b < rows.b1; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
    scalar_t* __restrict__ dx = d_xp + b * 3 * H;
    scalar_t* __restrict__ dgh = d_gh + b * 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t R = g[j], Z = g[H + j], N = g[2 * H + j];
      const scalar_t dh = grad_out[b * H + j] + carry[b * H + j];
      const scalar_t dN = dh * (1 - Z) * (1 - N * N);
      const scalar_t dR = dN * hn[b * H + j] * R * (1 - R);
      const scalar_t dZ = dh * (h[b * H + j] - N) * Z * (1 - Z);
      dx[j] = dR;
      dx[H + j] = dZ;
      dx[2 * H + j] = dN;
      dgh[j] = dR;
      dgh[H + j] = dZ;
      dgh[2 * H + j] = dN * R;
      carry[b * H + j] = dh * Z;
    }
  }
}

// Reset-before, first half of step t: dH~ pre-activation (needed for dL/d(R ⊙ h)).
template <typename scalar_t>
void backward_before_n_rows(Rows rows, int64_t H, const scalar_t* __restrict__ gates,
                            const scalar_t* __restrict__ grad_out,
                            const scalar_t* __restrict__ carry, scalar_t* __restrict__ d_xp) {
  for (int64_t b = rows.b0; b < rows.b1; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t Z = g[H + j], N = g[2 * H + j];
      const scalar_t dh = grad_out[b * H + j] + carry[b * H + j];
      d_xp[b * 3 * H + 2 * H + j] = dh * (1 - Z) * (1 - N * N);
    }
  }
}

// Reset-before, second half: dR, dZ and carry = dh ⊙ Z + dL/d(R ⊙ h) ⊙ R.
template <typename scalar_t>
void backward_before_rz_rows(Rows rows, int64_t H, const scalar_t* __restrict__ gates,
                             const scalar_t* __restrict__ h,
                             const scalar_t* __restrict__ grad_out,
                             const scalar_t* __restrict__ d_rh, scalar_t* __restrict__ carry,
                             scalar_t* __restrict__ d_xp) {
  for (int64_t b = rows.b0; b < rows.b1; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
    scalar_t* __restrict__ dx = d_xp + b * 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t R = g[j], Z = g[H + j], N = g[2 * H + j];
      const scalar_t hj = h[b * H + j], drh = d_rh[b * H + j];
      const scalar_t dh = grad_out[b * H + j] + carry[b * H + j];
      dx[j] = drh * hj * R * (1 - R);
      dx[H + j] = dh * (hj - N) * Z * (1 - Z);
      carry[b * H + j] = dh * Z + drh * R;
    }
  }
}

// After the time loop, one pass over every row of d_xp (and d_gh, reset-after) for the
// columns [c0, c1) that this thread owns, so that no two threads write the same element: the
// bias gradients (column sums) and, for one-hot input, d_table[id] += the d_xp row.
template <typename scalar_t>
void reduce_columns(int64_t rows, int64_t width, int64_t c0, int64_t c1,
                    const int64_t* __restrict__ ids, const scalar_t* __restrict__ d_xp,
                    const scalar_t* __restrict__ d_gh, scalar_t* __restrict__ d_table,
                    scalar_t* __restrict__ d_bias_ih, scalar_t* __restrict__ d_bias_hh) {
  std::fill(d_bias_ih + c0, d_bias_ih + c1, scalar_t(0));
  if (d_bias_hh != nullptr) std::fill(d_bias_hh + c0, d_bias_hh + c1, scalar_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* __restrict__ src = d_xp + r * width;
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) d_bias_ih[c] += src[c];
    if (ids != nullptr) {
      scalar_t* __restrict__ dst = d_table + ids[r] * width;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
    if (d_bias_hh != nullptr) {
      const scalar_t* __restrict__ src_h = d_gh + r * width;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d_bias_hh[c] += src_h[c];
    }
  }
}

// d_weight_hh (3H, H) in bf16 precision, from the gate gradients dG = d_xp and dGh = d_gh
// (T·B, 3H) and the states the products read: h0 and out[0:T-1] (and R ⊙ h, reset-before).
// Computed transposed, (H, ·) = states^T · gradients, so that the larger operand (the
// gradients) is the one packed by rows and only the states need a transposed copy.
void bf16_weight_gradient(const Tensor& dG, const Tensor& dGh, const Tensor& h0,
                          const Tensor& out, const Tensor& extra, bool reset_after,
                          Tensor& d_weight_hh) {
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  const int64_t K = reset_after ? 3 * H : 2 * H;
  Tensor d_w_t = at::empty({H, K}, out.options());  // (dW_h)^T
  grulm::gemm_bf16(h0.t(), dGh.narrow(0, 0, B).narrow(1, 0, K), d_w_t, false);
  if (T > 1) {
    grulm::gemm_bf16(out.narrow(0, 0, T - 1).view({(T - 1) * B, H}).t(),
                     dGh.narrow(0, B, (T - 1) * B).narrow(1, 0, K), d_w_t, true);
  }
  d_weight_hh.narrow(0, 0, K).copy_(d_w_t.t());
  if (!reset_after) {
    Tensor d_w_n_t = at::empty({H, H}, out.options());
    grulm::gemm_bf16(extra.view({T * B, H}).t(), dG.narrow(1, 2 * H, H), d_w_n_t, false);
    d_weight_hh.narrow(0, 2 * H, H).copy_(d_w_n_t.t());
  }
}

// Backward through time.
//   grad_out (T, B, H), grad_h_T (B, H): the gradients of the forward's two outputs;
//   x, table, h0, out, gates, extra, weight_hh: the forward's inputs and saved tensors;
//   bf16: every product (per step and the weight gradient) on bf16-rounded operands.
// Returns d_x (T, B, 3H) for features or d_table (V, 3H) for token ids, d_h0 (B, H),
// d_weight_hh (3H, H), d_bias_ih, d_bias_hh (3H,).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_out_in, const Tensor& grad_h_T, const Tensor& x_in,
    const c10::optional<Tensor>& table_in, const Tensor& h0_in, const Tensor& out,
    const Tensor& gates, const Tensor& extra, const Tensor& weight_hh_in, bool reset_after,
    bool bf16) {
  check_inputs(h0_in, weight_hh_in, bf16);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto h0 = h0_in.contiguous();
  const auto [x, table] = check_step_input(x_in, table_in, h0);
  const auto grad_out = grad_out_in.contiguous();
  const auto weight_hh = weight_hh_in.contiguous();
  const int64_t T = gates.size(0), B = h0.size(0), H = h0.size(1);
  const auto opts = h0.options();
  const bool token_ids = x.scalar_type() == at::kLong;

  auto d_xp = grulm::pooled_empty({T, B, 3 * H}, opts);
  // Reset-after: what the hidden products receive differs from d_xp in the n gate.
  auto d_gh = reset_after ? grulm::pooled_empty({T, B, 3 * H}, opts) : d_xp;
  auto d_table = token_ids ? at::zeros_like(table) : Tensor();
  auto d_bias_ih = at::empty({3 * H}, opts);
  auto d_bias_hh = reset_after ? at::empty({3 * H}, opts) : Tensor();
  auto d_rh = at::empty({B, H}, opts);  // reset-before: dL/d(R ⊙ h) of the current step
  auto carry = grad_h_T.to(h0.scalar_type()).contiguous().clone();  // dL/dh_t, direct paths
  auto d_weight_hh = T > 0 ? at::empty({3 * H, H}, opts) : at::zeros({3 * H, H}, opts);
  // dh_t = dG W: the rows of W_hh that multiply h itself, and (reset-before) those of W_hn.
  const int64_t K = reset_after ? 3 * H : 2 * H;
  const Tensor w_first = weight_hh.narrow(0, 0, K);  // (K, H)
  const Tensor w_n = weight_hh.narrow(0, 2 * H, H);  // (H, H)

  const int n = team_size(T, B, H);
  const auto dtype = opts.dtype().toScalarType();
  TeamErrors errors;

  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const scalar_t* h0_ptr = h0.data_ptr<scalar_t>();
    const scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const scalar_t* gates_ptr = gates.data_ptr<scalar_t>();
    const scalar_t* extra_ptr = extra.data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad_out.data_ptr<scalar_t>();
    scalar_t* d_xp_ptr = d_xp.data_ptr<scalar_t>();
    scalar_t* d_gh_ptr = d_gh.data_ptr<scalar_t>();
    scalar_t* carry_ptr = carry.data_ptr<scalar_t>();
    scalar_t* d_rh_ptr = d_rh.data_ptr<scalar_t>();
    std::optional<grulm::PackedMatrix<scalar_t>> p_first(std::in_place, w_first, bf16), p_n;
    if (!reset_after) p_n.emplace(w_n, bf16);
    auto team = [&] {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;
      pack_together<scalar_t>({&p_first, &p_n}, errors);
      const Rows rows = rows_of(B, omp_get_thread_num(), omp_get_num_threads());
      if (rows.count() > 0) errors.run([&] {
        const int64_t b0 = rows.b0, m = rows.count();
        for (int64_t t = T - 1; t >= 0; --t) {
          const scalar_t* h_t = t == 0 ? h0_ptr : out_ptr + (t - 1) * B * H;
          const scalar_t* gates_t = gates_ptr + t * B * 3 * H;
          const scalar_t* grad_t = grad_ptr + t * B * H;
          scalar_t* d_xp_t = d_xp_ptr + t * B * 3 * H;
          if (reset_after) {
            scalar_t* d_gh_t = d_gh_ptr + t * B * 3 * H;
            backward_after_rows(rows, H, gates_t, extra_ptr + t * B * H, h_t, grad_t,
                                carry_ptr, d_xp_t, d_gh_t);
            p_first->multiply(m, d_gh_t + b0 * 3 * H, 3 * H, carry_ptr + b0 * H, H, true);
          } else {
            backward_before_n_rows(rows, H, gates_t, grad_t, carry_ptr, d_xp_t);
            p_n->multiply(m, d_xp_t + b0 * 3 * H + 2 * H, 3 * H, d_rh_ptr + b0 * H, H, false);
            backward_before_rz_rows(rows, H, gates_t, h_t, grad_t, d_rh_ptr, carry_ptr, d_xp_t);
            p_first->multiply(m, d_xp_t + b0 * 3 * H, 3 * H, carry_ptr + b0 * H, H, true);
          }
        }
      });
      // Every row of d_xp is final once all threads are through the loop.
#pragma omp barrier
      errors.run([&] {
        const int k = omp_get_thread_num(), parts = omp_get_num_threads();
        reduce_columns(T * B, 3 * H, 3 * H * k / parts, 3 * H * (k + 1) / parts,
                       token_ids ? x.data_ptr<int64_t>() : nullptr, d_xp_ptr,
                       reset_after ? d_gh_ptr : nullptr,
                       token_ids ? d_table.data_ptr<scalar_t>() : nullptr,
                       d_bias_ih.data_ptr<scalar_t>(),
                       reset_after ? d_bias_hh.data_ptr<scalar_t>() : nullptr);
      });
    };
    in_team(n, team);
  };
  grulm::dispatch_floating(dtype, run);
  errors.rethrow();

  // Weight gradients: products over all T·B rows, on grulm's tiles (gemm_f32.h), all threads.
  // The state before step 0 is h0 and before step t > 0 is out[t-1], so the first step's rows
  // go separately.
  const Tensor dG = d_xp.view({T * B, 3 * H});
  const Tensor dGh = d_gh.view({T * B, 3 * H});
  if (T > 0 && bf16) {
    bf16_weight_gradient(dG, dGh, h0, out, extra, reset_after, d_weight_hh);
  } else if (T > 0) {
    Tensor d_w_h = d_weight_hh.narrow(0, 0, K);
    grulm::gemm_f32(dGh.narrow(0, 0, B).narrow(1, 0, K).t(), h0, d_w_h, false);
    if (T > 1) {
      grulm::gemm_f32(dGh.narrow(0, B, (T - 1) * B).narrow(1, 0, K).t(),
                      out.narrow(0, 0, T - 1).view({(T - 1) * B, H}), d_w_h, true);
    }
    if (!reset_after) {
      Tensor d_w_n = d_weight_hh.narrow(0, 2 * H, H);
      grulm::gemm_f32(dG.narrow(1, 2 * H, H).t(), extra.view({T * B, H}), d_w_n, false);
    }
  }
  if (!reset_after) d_bias_hh = d_bias_ih.clone();  // the two biases add up: same gradient
  return {token_ids ? d_table : d_xp, carry, d_weight_hh, d_bias_ih, d_bias_hh};
}

}  // namespace
}  // namespace grulm::gru

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def(
      "backward(Tensor grad_out, Tensor grad_h_T, Tensor x, Tensor? table, Tensor h0, "
      "Tensor out, Tensor gates, Tensor extra, Tensor weight_hh, bool reset_after, *, "
      "bool bf16=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.impl("backward", c10::DispatchKey::CPU, &grulm::gru::gru_backward);
}
