// The fused CPU GRU layer: forward and a hand-written backward through time.
//
// Layout. Everything inside runs time-major so that every step's slice is one matrix: the step
// inputs x W_ih^T (T, B, 3H) (or token ids (T, B) and the table W_ih^T (V, 3H) they index), the
// states out (T, B, H) after every step, the saved gate activations gates (T, B, 3H) =
// [R, Z, H~], and one saved (T, B, H) tensor per variant (`extra`): R ⊙ h for reset-before (the
// input of the W_hn product), h W_hn^T + b_hn for reset-after (what R multiplies). Parameters
// use torch.nn.GRU's layout: weight_hh (3H, H), biases (3H,), gates ordered r, z, n.
//
// Threads. The whole time loop runs inside ONE OpenMP team (no fork/join per step). Thread k
// owns a slice of hidden units [j0, j1): per step it computes the gate pre-activations of its
// units with one single-threaded GEMM against its own rows of W_hh (packed contiguously, so they
// stay in its core's cache), runs the fused elementwise pass for its units, and meets the other
// threads at a barrier once the next state is complete. Reset-before needs all of R ⊙ h
// before the W_hn product, hence a second GEMM and barrier per step. Backward mirrors this
// (per step: dh of its units via one GEMM against its columns of W_hh, two for reset-before).
// The weight gradients are single multi-threaded GEMMs over all T·B rows after the loop.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <bit>
#include <cmath>
#include <cstdint>
#include <tuple>

namespace {

using at::Tensor;

// exp for float32 that vectorises (Cephes' expf: range reduction to [-ln2/2, ln2/2], a
// degree-6 polynomial, scaling by 2^n through the exponent bits); relative error ~2 ulp.
// The input is clamped so that the result stays finite and non-zero.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) { return 1.0f - 2.0f / (1.0f + exp_approx(2.0f * x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// The hidden units [j0, j1) that thread k of n owns: near-equal slices, multiples of 16 wide.
struct Slice {
  int64_t j0, j1;
  int64_t width() const { return j1 - j0; }
};

inline Slice slice_of(int64_t H, int k, int n) {
  const int64_t chunk = ((H + n - 1) / n + 15) / 16 * 16;
  const int64_t j0 = std::min(H, k * chunk);
  return {j0, std::min(H, j0 + chunk)};
}

// W_hh's rows of gates `gates` (a subset of r=0, z=1, n=2) for units [j0, j1), stacked:
// (len(gates)·w, H). Thread k's GEMM reads only these rows.
Tensor pack_rows(const Tensor& weight_hh, Slice s, std::initializer_list<int64_t> gates) {
  const int64_t H = weight_hh.size(1);
  std::vector<Tensor> parts;
  for (int64_t g : gates) parts.push_back(weight_hh.narrow(0, g * H + s.j0, s.width()));
  return at::cat(parts).contiguous();
}

// The thread team: PyTorch's thread count, but at most one thread per 16 hidden units and
// per 2^18 multiply-adds of a step's recurrent GEMM (B·H·3H), so that every thread's share of
// a step (≳ 10 µs) dwarfs the cost of meeting at a barrier. Small layers run on one thread.
inline int team_size(int64_t B, int64_t H) {
  const int64_t by_work = B * H * 3 * H >> 18;
  return static_cast<int>(
      std::max<int64_t>(1, std::min({int64_t{at::get_num_threads()}, (H + 15) / 16, by_work})));
}

// Runs a thread's share of a step unless some thread has failed; records the first exception
// so that it can be rethrown after the parallel region (every thread still meets every barrier).
class TeamErrors {
 public:
  template <typename F>
  void run(const F& f) {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

// Runs `body` on a team of n threads. Its barriers are orphaned directives: with n == 1 there
// is no parallel region at all, so they do nothing and the GEMMs inside may use BLAS threads.
// (Inside an active region BLAS runs single-threaded; inside a one-thread region it would
// start nested teams of its own.)
template <typename F>
void in_team(int n, const F& body) {
  if (n > 1) {
#pragma omp parallel num_threads(n)
    body();
  } else {
    body();
  }
}

void check_inputs(const Tensor& h0, const Tensor& weight_hh) {
  TORCH_CHECK(h0.device().is_cpu(), "grulm cpu backend: tensors must be on the CPU");
  TORCH_CHECK(h0.scalar_type() == at::kFloat || h0.scalar_type() == at::kDouble,
              "grulm cpu backend: float32 or float64 only, got ", h0.scalar_type());
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

// Reset-after, units [j0, j1) of step t. g: this thread's (B, 3w) = h [W_r; W_z; W_n]^T.
template <typename scalar_t>
void forward_after_units(int64_t t, Slice s, const StepInput<scalar_t>& x,
                         const scalar_t* __restrict__ g, const scalar_t* __restrict__ h,
                         const scalar_t* __restrict__ b_rz, const scalar_t* __restrict__ b_in,
                         const scalar_t* __restrict__ b_hn, scalar_t* __restrict__ gates,
                         scalar_t* __restrict__ hn_out, scalar_t* __restrict__ h_next) {
  const int64_t B = x.B, H = x.H, w = s.width();
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ xb = x.row(t, b);
    const scalar_t* __restrict__ gb = g + b * 3 * w;
    scalar_t* __restrict__ out = gates + b * 3 * H;
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) {
      const int64_t j = s.j0 + i;
      const scalar_t R = sigmoid(xb[j] + gb[i] + b_rz[j]);
      const scalar_t Z = sigmoid(xb[H + j] + gb[w + i] + b_rz[H + j]);
      const scalar_t hn = gb[2 * w + i] + b_hn[j];
      const scalar_t N = tanh_(xb[2 * H + j] + b_in[j] + R * hn);
      out[j] = R;
      out[H + j] = Z;
      out[2 * H + j] = N;
      hn_out[b * H + j] = hn;
      h_next[b * H + j] = N + Z * (h[b * H + j] - N);
    }
  }
}

// Reset-before, first half of step t: R, Z and R ⊙ h. g: this thread's (B, 2w) = h [W_r; W_z]^T.
template <typename scalar_t>
void forward_before_rz_units(int64_t t, Slice s, const StepInput<scalar_t>& x,
                             const scalar_t* __restrict__ g, const scalar_t* __restrict__ h,
                             const scalar_t* __restrict__ bias, scalar_t* __restrict__ gates,
                             scalar_t* __restrict__ rh) {
  const int64_t B = x.B, H = x.H, w = s.width();
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ xb = x.row(t, b);
    const scalar_t* __restrict__ gb = g + b * 2 * w;
    scalar_t* __restrict__ out = gates + b * 3 * H;
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) {
      const int64_t j = s.j0 + i;
      const scalar_t R = sigmoid(xb[j] + gb[i] + bias[j]);
      out[j] = R;
      out[H + j] = sigmoid(xb[H + j] + gb[w + i] + bias[H + j]);
      rh[b * H + j] = R * h[b * H + j];
    }
  }
}

// Reset-before, second half: H~ and the next state. g: this thread's (B, w) = (R ⊙ h) W_n^T.
template <typename scalar_t>
void forward_before_n_units(int64_t t, Slice s, const StepInput<scalar_t>& x,
                            const scalar_t* __restrict__ g, const scalar_t* __restrict__ h,
                            const scalar_t* __restrict__ bias, scalar_t* __restrict__ gates,
                            scalar_t* __restrict__ h_next) {
  const int64_t B = x.B, H = x.H, w = s.width();
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ xb = x.row(t, b);
    const scalar_t* __restrict__ gb = g + b * w;
    scalar_t* __restrict__ out = gates + b * 3 * H;
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) {
      const int64_t j = s.j0 + i;
      const scalar_t N = tanh_(xb[2 * H + j] + gb[i] + bias[2 * H + j]);
      out[2 * H + j] = N;
      h_next[b * H + j] = N + out[H + j] * (h[b * H + j] - N);
    }
  }
}

// Forward over all T steps.
//   x: (T, B, 3H) projected features x W_ih^T (no bias), or (T, B) int64 token ids with
//   table = W_ih^T (V, 3H); h0 (B, H); weight_hh (3H, H); bias_ih, bias_hh (3H,).
// Returns out (T, B, H) (the state after every step), h_T (B, H), and for the backward
// gates (T, B, 3H) = [R, Z, H~] and extra (T, B, H).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x_in, const c10::optional<Tensor>& table_in, const Tensor& h0_in,
    const Tensor& weight_hh_in, const Tensor& bias_ih_in, const Tensor& bias_hh_in,
    bool reset_after) {
  check_inputs(h0_in, weight_hh_in);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto h0 = h0_in.contiguous();
  const auto [x, table] = check_step_input(x_in, table_in, h0);
  const auto weight_hh = weight_hh_in.contiguous();
  const int64_t T = x.size(0), B = h0.size(0), H = h0.size(1);
  // Biases outside R's reach fold together: r and z always, and n too for reset-before.
  const Tensor bias_sum = (bias_ih_in + bias_hh_in).contiguous();  // (3H,)
  const Tensor bias_ih = bias_ih_in.contiguous();
  const Tensor bias_hh = bias_hh_in.contiguous();
  const auto opts = h0.options();

  auto out = at::empty({T, B, H}, opts);
  auto gates = at::empty({T, B, 3 * H}, opts);
  auto extra = at::empty({T, B, H}, opts);

  const int n = team_size(B, H);
  const auto dtype = opts.dtype().toScalarType();
  TeamErrors errors;

  // A generic lambda rather than AT_DISPATCH_FLOATING_TYPES: OpenMP pragmas cannot sit inside
  // a macro's arguments.
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const StepInput<scalar_t> input = step_input<scalar_t>(x, table, B, H);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    scalar_t* gates_ptr = gates.data_ptr<scalar_t>();
    scalar_t* extra_ptr = extra.data_ptr<scalar_t>();
    const scalar_t* b_sum = bias_sum.data_ptr<scalar_t>();
    const scalar_t* b_in = bias_ih.data_ptr<scalar_t>() + 2 * H;
    const scalar_t* b_hn = bias_hh.data_ptr<scalar_t>() + 2 * H;
    auto team = [&] {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;
      const Slice s = slice_of(H, omp_get_thread_num(), omp_get_num_threads());
      const bool busy = s.width() > 0;
      Tensor w_rzn, w_n, g_rz, g_n;  // this thread's rows of W_hh and its GEMM outputs
      errors.run([&] {
        if (!busy) return;
        if (reset_after) {
          w_rzn = pack_rows(weight_hh, s, {0, 1, 2});  // (3w, H)
          g_rz = at::empty({B, 3 * s.width()}, opts);
        } else {
          w_rzn = pack_rows(weight_hh, s, {0, 1});  // (2w, H)
          w_n = pack_rows(weight_hh, s, {2});  // (w, H)
          g_rz = at::empty({B, 2 * s.width()}, opts);
          g_n = at::empty({B, s.width()}, opts);
        }
      });
      for (int64_t t = 0; t < T; ++t) {
        const Tensor h_prev = t == 0 ? h0 : out[t - 1];  // (B, H)
        const scalar_t* h_t = h_prev.data_ptr<scalar_t>();
        scalar_t* h_next = out_ptr + t * B * H;
        scalar_t* gates_t = gates_ptr + t * B * 3 * H;
        scalar_t* extra_t = extra_ptr + t * B * H;
        if (reset_after) {
          if (busy) errors.run([&] {
            at::mm_out(g_rz, h_prev, w_rzn.t());  // (B, 3w)
            forward_after_units(t, s, input, g_rz.data_ptr<scalar_t>(), h_t, b_sum, b_in, b_hn,
                                gates_t, extra_t, h_next);
          });
        } else {
          if (busy) errors.run([&] {
            at::mm_out(g_rz, h_prev, w_rzn.t());  // (B, 2w)
            forward_before_rz_units(t, s, input, g_rz.data_ptr<scalar_t>(), h_t, b_sum,
                                    gates_t, extra_t);
          });
#pragma omp barrier
          if (busy) errors.run([&] {
            at::mm_out(g_n, extra[t], w_n.t());  // (B, w)
            forward_before_n_units(t, s, input, g_n.data_ptr<scalar_t>(), h_t, b_sum, gates_t,
                                   h_next);
          });
        }
#pragma omp barrier
      }
    };
    in_team(n, team);
  };
  if (dtype == at::kDouble) {
    run(0.0);
  } else {
    run(0.0f);
  }
  errors.rethrow();
  Tensor h_T = T > 0 ? out[T - 1].clone() : h0.clone();
  return {out, h_T, gates, extra};
}

// ---- Backward --------------------------------------------------------------------------------

// Reset-after, units [j0, j1) of step t. dh = dL/dh_{t+1} = grad_out + carry.
// Writes d_xp = [dR, dZ, dH~] pre-activation gradients, d_gh = [dR, dZ, dH~ ⊙ R] (what the
// hidden products receive), and carry = dh ⊙ Z (h_t's direct path).
template <typename scalar_t>
void backward_after_units(int64_t B, int64_t H, Slice s, const scalar_t* __restrict__ gates,
                          const scalar_t* __restrict__ hn, const scalar_t* __restrict__ h,
                          const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ carry,
                          scalar_t* __restrict__ d_xp, scalar_t* __restrict__ d_gh) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
    scalar_t* __restrict__ dx = d_xp + b * 3 * H;
    scalar_t* __restrict__ dgh = d_gh + b * 3 * H;
#pragma omp simd
    for (int64_t j = s.j0; j < s.j1; ++j) {
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
void backward_before_n_units(int64_t B, int64_t H, Slice s, const scalar_t* __restrict__ gates,
                             const scalar_t* __restrict__ grad_out,
                             const scalar_t* __restrict__ carry, scalar_t* __restrict__ d_xp) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
#pragma omp simd
    for (int64_t j = s.j0; j < s.j1; ++j) {
      const scalar_t Z = g[H + j], N = g[2 * H + j];
      const scalar_t dh = grad_out[b * H + j] + carry[b * H + j];
      d_xp[b * 3 * H + 2 * H + j] = dh * (1 - Z) * (1 - N * N);
    }
  }
}

// Reset-before, second half: dR, dZ and carry = dh ⊙ Z + dL/d(R ⊙ h) ⊙ R.
template <typename scalar_t>
void backward_before_rz_units(int64_t B, int64_t H, Slice s, const scalar_t* __restrict__ gates,
                              const scalar_t* __restrict__ h,
                              const scalar_t* __restrict__ grad_out,
                              const scalar_t* __restrict__ d_rh, scalar_t* __restrict__ carry,
                              scalar_t* __restrict__ d_xp) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
    scalar_t* __restrict__ dx = d_xp + b * 3 * H;
#pragma omp simd
    for (int64_t j = s.j0; j < s.j1; ++j) {
      const scalar_t R = g[j], Z = g[H + j], N = g[2 * H + j];
      const scalar_t hj = h[b * H + j], drh = d_rh[b * H + j];
      const scalar_t dh = grad_out[b * H + j] + carry[b * H + j];
      dx[j] = drh * hj * R * (1 - R);
      dx[H + j] = dh * (hj - N) * Z * (1 - Z);
      carry[b * H + j] = dh * Z + drh * R;
    }
  }
}

// One-hot input: d_table[id] += d_xp row, for this thread's units of all three gates. Threads
// own disjoint columns, so the scatter needs no atomics.
template <typename scalar_t>
void scatter_table_units(int64_t B, int64_t H, Slice s, const int64_t* __restrict__ ids,
                         const scalar_t* __restrict__ d_xp, scalar_t* __restrict__ d_table) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* __restrict__ dx = d_xp + b * 3 * H;
    scalar_t* __restrict__ row = d_table + ids[b] * 3 * H;
    for (int64_t gate = 0; gate < 3; ++gate) {
#pragma omp simd
      for (int64_t j = gate * H + s.j0; j < gate * H + s.j1; ++j) row[j] += dx[j];
    }
  }
}

// Backward through time.
//   grad_out (T, B, H), grad_h_T (B, H): the gradients of the forward's two outputs;
//   x, table, h0, out, gates, extra, weight_hh: the forward's inputs and saved tensors.
// Returns d_x (T, B, 3H) for features or d_table (V, 3H) for token ids, d_h0 (B, H),
// d_weight_hh (3H, H), d_bias_ih, d_bias_hh (3H,).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_out_in, const Tensor& grad_h_T, const Tensor& x_in,
    const c10::optional<Tensor>& table_in, const Tensor& h0_in, const Tensor& out,
    const Tensor& gates, const Tensor& extra, const Tensor& weight_hh_in, bool reset_after) {
  check_inputs(h0_in, weight_hh_in);
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
  auto d_rh = at::empty({B, H}, opts);  // reset-before: dL/d(R ⊙ h) of the current step
  auto carry = grad_h_T.to(h0.scalar_type()).contiguous().clone();  // dL/dh_t, direct paths

  const int n = team_size(B, H);
  const auto dtype = opts.dtype().toScalarType();
  TeamErrors errors;

  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const scalar_t* h0_ptr = h0.data_ptr<scalar_t>();
    const scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const scalar_t* gates_ptr = gates.data_ptr<scalar_t>();
    const scalar_t* extra_ptr = extra.data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad_out.data_ptr<scalar_t>();
    const int64_t* ids_ptr = token_ids ? x.data_ptr<int64_t>() : nullptr;
    scalar_t* d_table_ptr = token_ids ? d_table.data_ptr<scalar_t>() : nullptr;
    scalar_t* d_xp_ptr = d_xp.data_ptr<scalar_t>();
    scalar_t* d_gh_ptr = d_gh.data_ptr<scalar_t>();
    scalar_t* carry_ptr = carry.data_ptr<scalar_t>();
    scalar_t* d_rh_ptr = d_rh.data_ptr<scalar_t>();
    auto team = [&] {
      at::AutoDispatchBelowADInplaceOrView worker_below_autograd;
      const Slice s = slice_of(H, omp_get_thread_num(), omp_get_num_threads());
      const bool busy = s.width() > 0;
      // Columns of W_hh for this thread's units: dh_t[:, j0:j1] = dG (B, ·) @ W[·, j0:j1].
      Tensor w_cols, w_n_cols, carry_k, d_rh_k;
      errors.run([&] {
        if (!busy) return;
        w_cols = weight_hh.narrow(0, 0, reset_after ? 3 * H : 2 * H).narrow(1, s.j0, s.width());
        w_n_cols = weight_hh.narrow(0, 2 * H, H).narrow(1, s.j0, s.width());
        carry_k = carry.narrow(1, s.j0, s.width());
        d_rh_k = d_rh.narrow(1, s.j0, s.width());
      });
      for (int64_t t = T - 1; t >= 0; --t) {
        const scalar_t* h_t = t == 0 ? h0_ptr : out_ptr + (t - 1) * B * H;
        const scalar_t* gates_t = gates_ptr + t * B * 3 * H;
        const scalar_t* extra_t = extra_ptr + t * B * H;
        const scalar_t* grad_t = grad_ptr + t * B * H;
        scalar_t* d_xp_t = d_xp_ptr + t * B * 3 * H;
        if (reset_after) {
          if (busy) errors.run([&] {
            backward_after_units(B, H, s, gates_t, extra_t, h_t, grad_t, carry_ptr, d_xp_t,
                                 d_gh_ptr + t * B * 3 * H);
          });
#pragma omp barrier
          if (busy) errors.run([&] { at::addmm_out(carry_k, carry_k, d_gh[t], w_cols); });
        } else {
          if (busy) errors.run([&] {
            backward_before_n_units(B, H, s, gates_t, grad_t, carry_ptr, d_xp_t);
          });
#pragma omp barrier
          if (busy) errors.run([&] {
            at::mm_out(d_rh_k, d_xp[t].narrow(1, 2 * H, H), w_n_cols);
            backward_before_rz_units(B, H, s, gates_t, h_t, grad_t, d_rh_ptr, carry_ptr,
                                     d_xp_t);
          });
#pragma omp barrier
          if (busy) errors.run([&] {
            at::addmm_out(carry_k, carry_k, d_xp[t].narrow(1, 0, 2 * H), w_cols);
          });
        }
        if (busy && token_ids) {
          scatter_table_units(B, H, s, ids_ptr + t * B, d_xp_t, d_table_ptr);
        }
        // No barrier here: the next step's elementwise pass reads and writes only this
        // thread's units, and writes another time slice than the GEMMs may still be reading.
      }
    };
    in_team(n, team);
  };
  if (dtype == at::kDouble) {
    run(0.0);
  } else {
    run(0.0f);
  }
  errors.rethrow();

  // Weight and bias gradients: GEMMs and column sums over all T·B rows. The state before
  // step 0 is h0 and before step t > 0 is out[t-1], so the first step's rows go separately.
  const Tensor dG = d_xp.view({T * B, 3 * H});
  const Tensor dGh = d_gh.view({T * B, 3 * H});
  const int64_t K = reset_after ? 3 * H : 2 * H;  // rows of W_hh that multiply h itself
  auto d_weight_hh = at::empty({3 * H, H}, opts);
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
  Tensor d_bias_ih = dG.sum(0);
  Tensor d_bias_hh = reset_after ? dGh.sum(0) : d_bias_ih.clone();
  return {token_ids ? d_table : d_xp, carry, d_weight_hh, d_bias_ih, d_bias_hh};
}

}  // namespace

TORCH_LIBRARY(grulm_cpu, m) {
  m.def(
      "forward(Tensor x, Tensor? table, Tensor h0, Tensor weight_hh, Tensor bias_ih, "
      "Tensor bias_hh, bool reset_after) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor grad_h_T, Tensor x, Tensor? table, Tensor h0, "
      "Tensor out, Tensor gates, Tensor extra, Tensor weight_hh, bool reset_after) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.impl("forward", c10::DispatchKey::CPU, &gru_forward);
  m.impl("backward", c10::DispatchKey::CPU, &gru_backward);
}
