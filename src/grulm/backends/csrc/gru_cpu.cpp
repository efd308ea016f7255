// The fused CPU GRU layer: forward and a hand-written backward through time.
//
// Layout. Everything inside runs time-major so that every step's slice is one contiguous
// matrix: the input projection xp (T, B, 3H) (x W_ih^T, without bias), the states
// hs (T+1, B, H) with hs[0] = h0, the saved gate activations gates (T, B, 3H) = [R, Z, H~],
// and one saved (T, B, H) tensor per variant (`extra`): R ⊙ h for reset-before (the input of
// the W_hn product), h W_hn^T + b_hn for reset-after (what R multiplies). Parameters use
// torch.nn.GRU's layout: weight_hh (3H, H), biases (3H,), gates ordered r, z, n.
//
// Per step, forward: reset-after does one GEMM h W_hh^T (B, 3H) and one fused elementwise
// pass; reset-before needs R before it can form (R ⊙ h) W_hn^T, so it does h W_hrz^T (B, 2H),
// a pass for R and Z, then (R ⊙ h) W_hn^T (B, H) and a pass for H~ and h'. Backward mirrors
// it with two GEMMs per step for dh, and the weight gradients are single GEMMs over all
// T·B rows after the loop. GEMMs go through ATen (MKL/OpenBLAS) into preallocated slices;
// the elementwise passes are plain loops the compiler vectorises, split over threads by rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using at::Tensor;

// exp for float32 that the compiler can vectorise (Cephes' expf: range reduction to
// [-ln2/2, ln2/2], a degree-6 polynomial, then scaling by 2^n through the exponent bits).
// Relative error about 2 ulp; inputs are clamped so the result stays finite and non-zero.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename scalar_t>
struct Activations;

template <>
struct Activations<float> {
  static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
  static inline float tanh(float x) { return 1.0f - 2.0f / (1.0f + exp_approx(2.0f * x)); }
};

template <>
struct Activations<double> {
  static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tanh(double x) { return std::tanh(x); }
};

// Rows of a B×H step split over threads; each row is a contiguous run of H elements.
template <typename F>
inline void for_rows(int64_t B, int64_t H, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(H, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) f(b);
  });
}

void check_inputs(const Tensor& h0, const Tensor& weight_hh) {
  TORCH_CHECK(h0.device().is_cpu(), "grulm cpu backend: tensors must be on the CPU");
  TORCH_CHECK(h0.scalar_type() == at::kFloat || h0.scalar_type() == at::kDouble,
              "grulm cpu backend: float32 or float64 only, got ", h0.scalar_type());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 3 * weight_hh.size(1),
              "grulm cpu backend: weight_hh must be (3H, H)");
}

// Forward over all T steps.
//   xp (T, B, 3H): x W_ih^T for every step (no bias); h0 (B, H); weight_hh (3H, H);
//   bias_ih, bias_hh (3H,).
// Returns hs (T+1, B, H), gates (T, B, 3H) = [R, Z, H~], extra (T, B, H).
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xp_in, const Tensor& h0_in,
                                               const Tensor& weight_hh_in,
                                               const Tensor& bias_ih_in,
                                               const Tensor& bias_hh_in, bool reset_after) {
  check_inputs(h0_in, weight_hh_in);
  const auto xp = xp_in.contiguous();
  const auto h0 = h0_in.contiguous();
  const auto weight_hh = weight_hh_in.contiguous();
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(1);
  TORCH_CHECK(xp.dim() == 3 && xp.size(2) == 3 * H && h0.size(0) == B,
              "grulm cpu backend: xp must be (T, B, 3H) and h0 (B, H)");
  // Biases that sit outside R's reach are folded together: r and z always, n for reset-before.
  Tensor bias_sum = bias_ih_in + bias_hh_in;  // (3H,)
  const Tensor bias_in = bias_ih_in.contiguous();
  const Tensor bias_hn = bias_hh_in.contiguous();

  auto hs = at::empty({T + 1, B, H}, h0.options());
  auto gates = at::empty({T, B, 3 * H}, h0.options());
  auto extra = at::empty({T, B, H}, h0.options());
  hs[0].copy_(h0);
  const Tensor w_rz = weight_hh.narrow(0, 0, 2 * H);  // (2H, H)
  const Tensor w_n = weight_hh.narrow(0, 2 * H, H);  // (H, H)
  auto hw = at::empty({B, reset_after ? 3 * H : 2 * H}, h0.options());  // h W^T of one step
  auto hw_n = at::empty({B, H}, h0.options());  // (R ⊙ h) W_hn^T, reset-before

  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "grulm_gru_forward", [&] {
    using A = Activations<scalar_t>;
    const scalar_t* bs = bias_sum.data_ptr<scalar_t>();
    const scalar_t* b_in = bias_in.data_ptr<scalar_t>() + 2 * H;
    const scalar_t* b_hn = bias_hn.data_ptr<scalar_t>() + 2 * H;
    for (int64_t t = 0; t < T; ++t) {
      const Tensor h_t = hs[t];
      const scalar_t* x_t = xp.data_ptr<scalar_t>() + t * B * 3 * H;
      const scalar_t* h_ptr = h_t.data_ptr<scalar_t>();
      scalar_t* h_next = hs.data_ptr<scalar_t>() + (t + 1) * B * H;
      scalar_t* g_t = gates.data_ptr<scalar_t>() + t * B * 3 * H;
      scalar_t* e_t = extra.data_ptr<scalar_t>() + t * B * H;
      if (reset_after) {
        at::mm_out(hw, h_t, weight_hh.t());  // (B, 3H)
        const scalar_t* hw_ptr = hw.data_ptr<scalar_t>();
        for_rows(B, H, [&](int64_t b) {
          const scalar_t* __restrict__ x = x_t + b * 3 * H;
          const scalar_t* __restrict__ g = hw_ptr + b * 3 * H;
          const scalar_t* __restrict__ h = h_ptr + b * H;
          scalar_t* __restrict__ out = g_t + b * 3 * H;
          scalar_t* __restrict__ hn_out = e_t + b * H;
          scalar_t* __restrict__ hy = h_next + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t R = A::sigmoid(x[j] + g[j] + bs[j]);
            const scalar_t Z = A::sigmoid(x[H + j] + g[H + j] + bs[H + j]);
            const scalar_t hn = g[2 * H + j] + b_hn[j];
            const scalar_t N = A::tanh(x[2 * H + j] + b_in[j] + R * hn);
            out[j] = R;
            out[H + j] = Z;
            out[2 * H + j] = N;
            hn_out[j] = hn;
            hy[j] = N + Z * (h[j] - N);
          }
        });
      } else {
        at::mm_out(hw, h_t, w_rz.t());  // (B, 2H)
        const scalar_t* hw_ptr = hw.data_ptr<scalar_t>();
        for_rows(B, H, [&](int64_t b) {
          const scalar_t* __restrict__ x = x_t + b * 3 * H;
          const scalar_t* __restrict__ g = hw_ptr + b * 2 * H;
          const scalar_t* __restrict__ h = h_ptr + b * H;
          scalar_t* __restrict__ out = g_t + b * 3 * H;
          scalar_t* __restrict__ rh = e_t + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t R = A::sigmoid(x[j] + g[j] + bs[j]);
            out[j] = R;
            out[H + j] = A::sigmoid(x[H + j] + g[H + j] + bs[H + j]);
            rh[j] = R * h[j];
          }
        });
        at::mm_out(hw_n, extra[t], w_n.t());  // (B, H)
        const scalar_t* hwn_ptr = hw_n.data_ptr<scalar_t>();
        for_rows(B, H, [&](int64_t b) {
          const scalar_t* __restrict__ x = x_t + b * 3 * H + 2 * H;
          const scalar_t* __restrict__ g = hwn_ptr + b * H;
          const scalar_t* __restrict__ h = h_ptr + b * H;
          scalar_t* __restrict__ out = g_t + b * 3 * H;
          scalar_t* __restrict__ hy = h_next + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t N = A::tanh(x[j] + g[j] + bs[2 * H + j]);
            out[2 * H + j] = N;
            hy[j] = N + out[H + j] * (h[j] - N);
          }
        });
      }
    }
  });
  return {hs, gates, extra};
}

// Backward through time.
//   grad_hs (T+1, B, H): dL/d hs (the outputs' gradients plus the final state's at hs[T]);
//   hs, gates, extra, weight_hh: as saved by the forward.
// Returns d_xp (T, B, 3H), d_h0 (B, H), d_weight_hh (3H, H), d_bias_ih, d_bias_hh (3H,).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_hs_in, const Tensor& hs, const Tensor& gates, const Tensor& extra,
    const Tensor& weight_hh_in, bool reset_after) {
  check_inputs(hs[0], weight_hh_in);
  const auto grad_hs = grad_hs_in.contiguous();
  const auto weight_hh = weight_hh_in.contiguous();
  const int64_t T = gates.size(0), B = gates.size(1), H = hs.size(2);
  const auto opts = hs.options();

  auto d_xp = at::empty({T, B, 3 * H}, opts);  // pre-activation gradients [dR, dZ, dH~]
  // Reset-after: dL/d(h W_hn^T + b_hn) = dH~_pre ⊙ R, one (B, H) slice per step.
  // Reset-before: dL/d(R ⊙ h) of the current step (a scratch).
  auto d_hn = at::empty({reset_after ? T : 1, B, H}, opts);
  auto carry = at::empty({B, H}, opts);  // dL/dh_t through h_t's direct paths
  const Tensor w_rz = weight_hh.narrow(0, 0, 2 * H);  // (2H, H)
  const Tensor w_n = weight_hh.narrow(0, 2 * H, H);  // (H, H)

  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "grulm_gru_backward", [&] {
    scalar_t* carry_ptr = carry.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* h_ptr = hs.data_ptr<scalar_t>() + t * B * H;
      const scalar_t* gh = grad_hs.data_ptr<scalar_t>() + (t + 1) * B * H;
      const scalar_t* g_t = gates.data_ptr<scalar_t>() + t * B * 3 * H;
      const scalar_t* e_t = extra.data_ptr<scalar_t>() + t * B * H;
      scalar_t* dx_t = d_xp.data_ptr<scalar_t>() + t * B * 3 * H;
      const bool first = t == T - 1;  // carry holds nothing yet
      Tensor dG_rz = d_xp[t].narrow(1, 0, 2 * H);  // (B, 2H), row stride 3H
      if (reset_after) {
        scalar_t* dhn_t = d_hn.data_ptr<scalar_t>() + t * B * H;
        for_rows(B, H, [&](int64_t b) {
          const scalar_t* __restrict__ g = g_t + b * 3 * H;
          const scalar_t* __restrict__ hn = e_t + b * H;
          const scalar_t* __restrict__ h = h_ptr + b * H;
          const scalar_t* __restrict__ dh_out = gh + b * H;
          scalar_t* __restrict__ c = carry_ptr + b * H;
          scalar_t* __restrict__ dx = dx_t + b * 3 * H;
          scalar_t* __restrict__ dhn = dhn_t + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t R = g[j], Z = g[H + j], N = g[2 * H + j];
            const scalar_t dh = dh_out[j] + (first ? scalar_t(0) : c[j]);
            const scalar_t dN = dh * (1 - Z) * (1 - N * N);
            dx[j] = dN * hn[j] * R * (1 - R);
            dx[H + j] = dh * (h[j] - N) * Z * (1 - Z);
            dx[2 * H + j] = dN;
            dhn[j] = dN * R;
            c[j] = dh * Z;
          }
        });
        at::addmm_out(carry, carry, dG_rz, w_rz);  // += dG_rz W_hrz
        at::addmm_out(carry, carry, d_hn[t], w_n);  // += dG_hn W_hn
      } else {
        scalar_t* drh_ptr = d_hn.data_ptr<scalar_t>();
        for_rows(B, H, [&](int64_t b) {
          const scalar_t* __restrict__ g = g_t + b * 3 * H;
          const scalar_t* __restrict__ dh_out = gh + b * H;
          const scalar_t* __restrict__ c = carry_ptr + b * H;
          scalar_t* __restrict__ dx = dx_t + b * 3 * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t Z = g[H + j], N = g[2 * H + j];
            const scalar_t dh = dh_out[j] + (first ? scalar_t(0) : c[j]);
            dx[2 * H + j] = dh * (1 - Z) * (1 - N * N);
          }
        });
        Tensor d_rh = d_hn[0];
        at::mm_out(d_rh, d_xp[t].narrow(1, 2 * H, H), w_n);  // dL/d(R ⊙ h)
        for_rows(B, H, [&](int64_t b) {
          const scalar_t* __restrict__ g = g_t + b * 3 * H;
          const scalar_t* __restrict__ h = h_ptr + b * H;
          const scalar_t* __restrict__ dh_out = gh + b * H;
          const scalar_t* __restrict__ drh = drh_ptr + b * H;
          scalar_t* __restrict__ c = carry_ptr + b * H;
          scalar_t* __restrict__ dx = dx_t + b * 3 * H;
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t R = g[j], Z = g[H + j], N = g[2 * H + j];
            const scalar_t dh = dh_out[j] + (first ? scalar_t(0) : c[j]);
            dx[j] = drh[j] * h[j] * R * (1 - R);
            dx[H + j] = dh * (h[j] - N) * Z * (1 - Z);
            c[j] = dh * Z + drh[j] * R;
          }
        });
        at::addmm_out(carry, carry, dG_rz, w_rz);  // += dG_rz W_hrz
      }
    }
  });

  Tensor d_h0 = T > 0 ? carry + grad_hs[0] : grad_hs[0].clone();
  // Weight and bias gradients: one GEMM / one column sum over all T·B rows.
  const Tensor dG = d_xp.view({T * B, 3 * H});
  const Tensor h_prev = hs.narrow(0, 0, T).view({T * B, H});
  auto d_weight_hh = at::empty({3 * H, H}, opts);
  Tensor d_w_rz = d_weight_hh.narrow(0, 0, 2 * H);
  Tensor d_w_n = d_weight_hh.narrow(0, 2 * H, H);
  at::mm_out(d_w_rz, dG.narrow(1, 0, 2 * H).t(), h_prev);
  Tensor d_bias_ih = dG.sum(0);
  Tensor d_bias_hh;
  if (reset_after) {
    const Tensor dG_hn = d_hn.view({T * B, H});
    at::mm_out(d_w_n, dG_hn.t(), h_prev);
    d_bias_hh = at::cat({d_bias_ih.narrow(0, 0, 2 * H), dG_hn.sum(0)});
  } else {
    at::mm_out(d_w_n, dG.narrow(1, 2 * H, H).t(), extra.view({T * B, H}));
    d_bias_hh = d_bias_ih.clone();
  }
  return {d_xp, d_h0, d_weight_hh, d_bias_ih, d_bias_hh};
}

}  // namespace

TORCH_LIBRARY(grulm_cpu, m) {
  m.def(
      "forward(Tensor xp, Tensor h0, Tensor weight_hh, Tensor bias_ih, Tensor bias_hh, "
      "bool reset_after) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_hs, Tensor hs, Tensor gates, Tensor extra, Tensor weight_hh, "
      "bool reset_after) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.impl("forward", c10::DispatchKey::CPU, &gru_forward);
  m.impl("backward", c10::DispatchKey::CPU, &gru_backward);
}
