// The fused CPU GRU layer: forward and a hand-written backward through time.
//
// Layout. Everything inside runs time-major so that every step's slice is one matrix: the step
// inputs x W_ih^T (T, B, 3H) (or token ids (T, B) and the table W_ih^T (V, 3H) they index), the
// states out (T, B, H) after every step, the saved gate activations gates (T, B, 3H) =
// [R, Z, H~], and one saved (T, B, H) tensor per variant (`extra`): R ⊙ h for reset-before (the
// input of the W_hn product), h W_hn^T + b_hn for reset-after (what R multiplies). Parameters
// use torch.nn.GRU's layout: weight_hh (3H, H), biases (3H,), gates ordered r, z, n.
//
// Threads. The sequences of a batch do not interact until the weight gradients, so the whole
// time loop runs inside ONE OpenMP team in which thread k owns a block of batch rows [b0, b1)
// and walks all T steps for them with no barrier at all. Per step it multiplies its rows of
// the state by W_hh (packed once per call, see packed_matmul.h; every thread reads the same
// packed copy, which fits a core's L2 for H = 256) and runs one fused elementwise pass over
// them; reset-before needs R ⊙ h before the W_hn product, hence two products and two passes.
// Backward mirrors this per row block. The weight gradients are multi-threaded GEMMs over all
// T·B rows after the loop.
//
// Precision. With `bf16`, every product (the step products, and the backward's dh products and
// weight gradient) takes bfloat16-rounded operands and accumulates in float32
// (packed_matmul.h, gemm_bf16.h); the gates' elementwise math and everything saved stay float32.

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/Parallel.h>
#include <c10/core/alignment.h>
#include <torch/library.h>

#include "activations.h"
#include "gemm_bf16.h"
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
using grulm::in_team;
using grulm::sigmoid;
using grulm::tanh_;
using grulm::Rows;
using grulm::rows_of;
using grulm::TeamErrors;

// The thread team: PyTorch's thread count, but at most one thread per batch row and per 2^20
// multiply-adds of the call's recurrent products (T·B·3H·H), so that a thread's share dwarfs
// the cost of starting the team. Small calls run on one thread.
inline int team_size(int64_t T, int64_t B, int64_t H) {
  const int64_t by_work = T * B * 3 * H * H >> 20;
  return static_cast<int>(
      std::max<int64_t>(1, std::min({int64_t{at::get_num_threads()}, B, by_work})));
}

void check_inputs(const Tensor& h0, const Tensor& weight_hh, bool bf16) {
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
std::pair<Tensor, Tensor> check_step_input(const Tensor& x, const c10::optional<Tensor>& table,
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

// ---- Forward ---------------------------------------------------------------------------------

// Reset-after, rows [b0, b1) of step t. g: (rows, 3H) = h [W_r; W_z; W_n]^T for those rows.
template <typename scalar_t>
void forward_after_rows(int64_t t, Rows rows, const StepInput<scalar_t>& x,
                        const scalar_t* __restrict__ g, const scalar_t* __restrict__ h,
                        const scalar_t* __restrict__ b_rz, const scalar_t* __restrict__ b_in,
                        const scalar_t* __restrict__ b_hn, scalar_t* __restrict__ gates,
                        scalar_t* __restrict__ hn_out, scalar_t* __restrict__ h_next) {
  const int64_t H = x.H;
  for (int64_t b = rows.b0; b < rows.b1; ++b) {
    const scalar_t* __restrict__ xb = x.row(t, b);
    const scalar_t* __restrict__ gb = g + (b - rows.b0) * 3 * H;
    scalar_t* __restrict__ out = gates + b * 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t R = sigmoid(xb[j] + gb[j] + b_rz[j]);
      const scalar_t Z = sigmoid(xb[H + j] + gb[H + j] + b_rz[H + j]);
      const scalar_t hn = gb[2 * H + j] + b_hn[j];
      const scalar_t N = tanh_(xb[2 * H + j] + b_in[j] + R * hn);
      out[j] = R;
      out[H + j] = Z;
      out[2 * H + j] = N;
      hn_out[b * H + j] = hn;
      h_next[b * H + j] = N + Z * (h[b * H + j] - N);
    }
  }
}

// Reset-before, first half of step t: R, Z and R ⊙ h. g: (rows, 2H) = h [W_r; W_z]^T.
template <typename scalar_t>
void forward_before_rz_rows(int64_t t, Rows rows, const StepInput<scalar_t>& x,
                            const scalar_t* __restrict__ g, const scalar_t* __restrict__ h,
                            const scalar_t* __restrict__ bias, scalar_t* __restrict__ gates,
                            scalar_t* __restrict__ rh) {
  const int64_t H = x.H;
  for (int64_t b = rows.b0; b < rows.b1; ++b) {
    const scalar_t* __restrict__ xb = x.row(t, b);
    const scalar_t* __restrict__ gb = g + (b - rows.b0) * 2 * H;
    scalar_t* __restrict__ out = gates + b * 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t R = sigmoid(xb[j] + gb[j] + bias[j]);
      out[j] = R;
      out[H + j] = sigmoid(xb[H + j] + gb[H + j] + bias[H + j]);
      rh[b * H + j] = R * h[b * H + j];
    }
  }
}

// Reset-before, second half: H~ and the next state. g: (rows, H) = (R ⊙ h) W_n^T.
template <typename scalar_t>
void forward_before_n_rows(int64_t t, Rows rows, const StepInput<scalar_t>& x,
                           const scalar_t* __restrict__ g, const scalar_t* __restrict__ h,
                           const scalar_t* __restrict__ bias, scalar_t* __restrict__ gates,
                           scalar_t* __restrict__ h_next) {
  const int64_t H = x.H;
  for (int64_t b = rows.b0; b < rows.b1; ++b) {
    const scalar_t* __restrict__ xb = x.row(t, b);
    const scalar_t* __restrict__ gb = g + (b - rows.b0) * H;
    scalar_t* __restrict__ out = gates + b * 3 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t N = tanh_(xb[2 * H + j] + gb[j] + bias[2 * H + j]);
      out[2 * H + j] = N;
      h_next[b * H + j] = N + out[H + j] * (h[b * H + j] - N);
    }
  }
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

// Forward over all T steps.
//   x: (T, B, 3H) projected features x W_ih^T (no bias), or (T, B) int64 token ids with
//   table = W_ih^T (V, 3H); h0 (B, H); weight_hh (3H, H); bias_ih, bias_hh (3H,).
// bf16: the step products take bf16-rounded operands (float32 accumulation).
// Returns out (T, B, H) (the state after every step), h_T (B, H), and for the backward
// gates (T, B, 3H) = [R, Z, H~] and extra (T, B, H). With save = false (forward only:
// evaluation, generation) those two are undefined: every step writes its gates into its
// thread's one-step (B, 3H) + (B, H) scratch (only its own rows), so the loop streams through
// (T, B, H) instead of (T, B, 5H). Step t sits in that scratch where the saving path's slice
// would sit modulo the allocator's alignment, so the vectorised loops peel the same elements
// and the outputs are bit for bit the saving path's (float64's vector exp and tanh differ
// from the scalar ones in the last bit).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x_in, const c10::optional<Tensor>& table_in, const Tensor& h0_in,
    const Tensor& weight_hh_in, const Tensor& bias_ih_in, const Tensor& bias_hh_in,
    bool reset_after, bool save, bool bf16) {
  check_inputs(h0_in, weight_hh_in, bf16);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto h0 = h0_in.contiguous();
  const auto [x, table] = check_step_input(x_in, table_in, h0);
  const auto weight_hh = weight_hh_in.contiguous();
  const int64_t T = x.size(0), B = h0.size(0), H = h0.size(1);
  // Biases outside R's reach fold together: r and z always, and n too for reset-before.
  const Tensor bias_sum = at::add(bias_ih_in, bias_hh_in).contiguous();  // (3H,)
  const Tensor bias_ih = bias_ih_in.contiguous();
  const Tensor bias_hh = bias_hh_in.contiguous();
  const auto opts = h0.options();

  auto out = at::empty({T, B, H}, opts);
  // Forward only: one slab per thread, each a whole number of alignments long (pad elements
  // are one alignment or more for any dtype) with room to shift a step by less than one.
  const int64_t pad = c10::gAlignment, threads = team_size(T, B, H);
  const auto slab = [&](int64_t width) { return (B * width + pad - 1) / pad * pad + pad; };
  auto gates = at::empty({save ? T * B * 3 * H : threads * slab(3 * H)}, opts);
  auto extra = at::empty({save ? T * B * H : threads * slab(H)}, opts);
  // The step products' right-hand sides: W_hh^T whole (reset-after) or split at the n gate.
  const int64_t K = reset_after ? 3 * H : 2 * H;  // columns of the first product
  const Tensor w_first = weight_hh.narrow(0, 0, K).t();  // (H, K)
  const Tensor w_n = weight_hh.narrow(0, 2 * H, H).t();  // (H, H), reset-before only

  const int n = team_size(T, B, H);
  const auto dtype = opts.dtype().toScalarType();
  TeamErrors errors;

  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const StepInput<scalar_t> input = step_input<scalar_t>(x, table, B, H);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    scalar_t* gates_ptr = gates.data_ptr<scalar_t>();
    scalar_t* extra_ptr = extra.data_ptr<scalar_t>();
    // Step t's gates or extra (width 3H or H per row): its own slice, or the thread's scratch.
    auto step_slice = [&](scalar_t* base, int64_t t, int64_t width) {
      const int64_t offset = t * B * width, align = c10::gAlignment / sizeof(scalar_t);
      return save ? base + offset : base + omp_get_thread_num() * slab(width) + offset % align;
    };
    const scalar_t* h0_ptr = h0.data_ptr<scalar_t>();
    const scalar_t* b_sum = bias_sum.data_ptr<scalar_t>();
    const scalar_t* b_in = bias_ih.data_ptr<scalar_t>() + 2 * H;
    const scalar_t* b_hn = bias_hh.data_ptr<scalar_t>() + 2 * H;
    std::optional<grulm::PackedMatrix<scalar_t>> p_first(std::in_place, w_first, bf16), p_n;
    if (!reset_after) p_n.emplace(w_n, bf16);
    auto team = [&] {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;
      pack_together<scalar_t>({&p_first, &p_n}, errors);
      const Rows rows = rows_of(B, omp_get_thread_num(), omp_get_num_threads());
      if (rows.count() == 0) return;
      errors.run([&] {
        // This thread's products for its rows: (rows, K) and (rows, H).
        std::vector<scalar_t> g(rows.count() * K), g_n(reset_after ? 0 : rows.count() * H);
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* h_t = t == 0 ? h0_ptr : out_ptr + (t - 1) * B * H;
          scalar_t* h_next = out_ptr + t * B * H;
          scalar_t* gates_t = step_slice(gates_ptr, t, 3 * H);
          scalar_t* extra_t = step_slice(extra_ptr, t, H);
          p_first->multiply(rows.count(), h_t + rows.b0 * H, H, g.data(), K, false);
          if (reset_after) {
            forward_after_rows(t, rows, input, g.data(), h_t, b_sum, b_in, b_hn, gates_t,
                               extra_t, h_next);
          } else {
            forward_before_rz_rows(t, rows, input, g.data(), h_t, b_sum, gates_t, extra_t);
            p_n->multiply(rows.count(), extra_t + rows.b0 * H, H, g_n.data(), H, false);
            forward_before_n_rows(t, rows, input, g_n.data(), h_t, b_sum, gates_t, h_next);
          }
        }
      });
    };
    in_team(n, team);
  };
  grulm::dispatch_floating(dtype, run);
  errors.rethrow();
  Tensor h_T = T > 0 ? out[T - 1].clone() : h0.clone();
  if (!save) return {out, h_T, Tensor(), Tensor()};
  return {out, h_T, gates.view({T, B, 3 * H}), extra.view({T, B, H})};
}

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

  auto d_xp = at::empty({T, B, 3 * H}, opts);
  // Reset-after: what the hidden products receive differs from d_xp in the n gate.
  auto d_gh = reset_after ? at::empty({T, B, 3 * H}, opts) : d_xp;
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

  // Weight gradients: GEMMs (BLAS, all threads) over all T·B rows.
  // The state before step 0 is h0 and before step t > 0 is out[t-1], so the first step's rows
  // go separately. (The packed kernel is no faster than BLAS on these tall products.)
  const Tensor dG = d_xp.view({T * B, 3 * H});
  const Tensor dGh = d_gh.view({T * B, 3 * H});
  if (T > 0 && bf16) {
    bf16_weight_gradient(dG, dGh, h0, out, extra, reset_after, d_weight_hh);
  } else if (T > 0) {
    Tensor d_w_h = d_weight_hh.narrow(0, 0, K);
    at::mm_out(d_w_h, dGh.narrow(0, 0, B).narrow(1, 0, K).t(), h0);
    if (T > 1) {
      at::addmm_out(d_w_h, d_w_h, dGh.narrow(0, B, (T - 1) * B).narrow(1, 0, K).t(),
                    out.narrow(0, 0, T - 1).view({(T - 1) * B, H}));
    }
    if (!reset_after) {
      Tensor d_w_n = d_weight_hh.narrow(0, 2 * H, H);
      at::mm_out(d_w_n, dG.narrow(1, 2 * H, H).t(), extra.view({T * B, H}));
    }
  }
  if (!reset_after) d_bias_hh = d_bias_ih.clone();  // the two biases add up: same gradient
  return {token_ids ? d_table : d_xp, carry, d_weight_hh, d_bias_ih, d_bias_hh};
}

}  // namespace

TORCH_LIBRARY(grulm_cpu, m) {
  m.def(
      "forward(Tensor x, Tensor? table, Tensor h0, Tensor weight_hh, Tensor bias_ih, "
      "Tensor bias_hh, bool reset_after, bool save=True, *, bool bf16=False) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor grad_h_T, Tensor x, Tensor? table, Tensor h0, "
      "Tensor out, Tensor gates, Tensor extra, Tensor weight_hh, bool reset_after, *, "
      "bool bf16=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.impl("forward", c10::DispatchKey::CPU, &gru_forward);
  m.impl("backward", c10::DispatchKey::CPU, &gru_backward);
}
