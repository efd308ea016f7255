// The fused CPU GRU layer: its forward here, its hand-written backward through time in
// gru_cpu_backward.cpp, what both share in gru_layer.h.
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
// (packed_matmul.h; the weight gradient in gemm_bf16.h); the gates' elementwise math and
// everything saved stay float32.

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <c10/core/alignment.h>
#include <torch/library.h>

#include "activations.h"
#include "block_pool.h"
#include "gru_layer.h"
#include "packed_matmul.h"
#include "team.h"

#include <omp.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace grulm::gru {
namespace {

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

  auto out = grulm::pooled_empty({T, B, H}, opts);
  // Forward only: one slab per thread, each a whole number of alignments long (pad elements
  // are one alignment or more for any dtype) with room to shift a step by less than one.
  const int64_t pad = c10::gAlignment, threads = team_size(T, B, H);
  const auto slab = [&](int64_t width) { return (B * width + pad - 1) / pad * pad + pad; };
  auto gates = grulm::pooled_empty({save ? T * B * 3 * H : threads * slab(3 * H)}, opts);
  auto extra = grulm::pooled_empty({save ? T * B * H : threads * slab(H)}, opts);
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

}  // namespace
}  // namespace grulm::gru

TORCH_LIBRARY(grulm_cpu, m) {
  m.def(
      "forward(Tensor x, Tensor? table, Tensor h0, Tensor weight_hh, Tensor bias_ih, "
      "Tensor bias_hh, bool reset_after, bool save=True, *, bool bf16=False) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.impl("forward", c10::DispatchKey::CPU, &grulm::gru::gru_forward);
}
