// Single-step decoding of a GRU language model: one token per sequence through every layer and
// the head, for generation.
//
// Generation feeds one token per sequence per step, so a step is a handful of matrix-vector
// products (N rows, usually one): too small for BLAS or a thread team to pay off, and bound by
// the cost of each call from Python rather than by arithmetic. So a step is ONE call, on one
// thread, and so are a whole prefix (the warm-up) and a whole greedy run: their steps run back
// to back here.
//
// It reads the model's own parameters in torch.nn.GRU's layout, nothing derived from them:
// every product is a row of a weight matrix dotted with a vector (W (M, K) row-major · v),
// four rows per pass over v, each dot product vectorised along K; for one-hot input the input
// projection of token v is column v of W_ih, read directly.
//
// `weights` (grulm.backends.decode.DecodeParams.tensors()):
//   per layer k  W_ih (3H, I), W_hh (3H, H), b_ih (3H), b_hh (3H)
//   head         W (V, H), b (V)
//   embedding    E (V, I), only for embedding input (else layer 0's I is V: one-hot input)
// Per layer, gates ordered r, z, n, as grulm.backends.reference.gru_cell:
//   gx = W_ih x + b_ih,   gh = W_hh h + b_hh
//   R = σ(gx_r + gh_r),   Z = σ(gx_z + gh_z)
//   H~ = tanh(gx_n + R ⊙ gh_n)                       reset-after
//      = tanh(gx_n + W_hn (R ⊙ h) + b_hn)            reset-before
//   h' = Z ⊙ h + (1 − Z) ⊙ H~

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "activations.h"
#include "team.h"

#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

// out (M) = W (M × K, row-major) · v (K) + b.
template <typename T>
void matvec(const T* __restrict W, const T* __restrict v, const T* __restrict b,
            T* __restrict out, int64_t M, int64_t K) {
  int64_t j = 0;
  for (; j + 4 <= M; j += 4) {
    const T* w0 = W + j * K;
    const T* w1 = w0 + K;
    const T* w2 = w1 + K;
    const T* w3 = w2 + K;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < K; ++k) {
      s0 += w0[k] * v[k];
      s1 += w1[k] * v[k];
      s2 += w2[k] * v[k];
      s3 += w3[k] * v[k];
    }
    out[j] = s0 + b[j];
    out[j + 1] = s1 + b[j + 1];
    out[j + 2] = s2 + b[j + 2];
    out[j + 3] = s3 + b[j + 3];
  }
  for (; j < M; ++j) {
    const T* w = W + j * K;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < K; ++k) s += w[k] * v[k];
    out[j] = s + b[j];
  }
}

template <typename T>
struct Layer {
  const T *w_ih, *w_hh, *b_ih, *b_hh;
  int64_t inputs;  // I
};

template <typename T>
class Model {
 public:
  Model(const std::vector<Tensor>& weights, int64_t L, int64_t H, bool reset_after)
      : H_(H), reset_after_(reset_after), scratch_(8 * H) {
    for (int64_t k = 0; k < L; ++k) {
      const Tensor& w_ih = weights[4 * k];
      layers_.push_back({w_ih.data_ptr<T>(), weights[4 * k + 1].data_ptr<T>(),
                         weights[4 * k + 2].data_ptr<T>(), weights[4 * k + 3].data_ptr<T>(),
                         w_ih.size(1)});
    }
    head_w_ = weights[4 * L].data_ptr<T>();
    head_b_ = weights[4 * L + 1].data_ptr<T>();
    V_ = weights[4 * L].size(0);
    embedding_ = static_cast<int64_t>(weights.size()) > 4 * L + 2
                     ? weights[4 * L + 2].data_ptr<T>()
                     : nullptr;
  }

  int64_t vocab() const { return V_; }

  // Feeds `token` to one sequence whose layer-k state is h + k·stride_h (updated in place);
  // writes the next-token logits (V).
  void step(int64_t token, T* h, int64_t stride_h, T* logits) {
    const int64_t H = H_;
    T* gx = scratch_.data();  // (3H)
    T* gh = gx + 3 * H;  // (3H)
    T* rh = gh + 3 * H;  // (H) R ⊙ h, reset-before
    T* cand = rh + H;  // (H) H~
    const T* x = nullptr;
    for (size_t k = 0; k < layers_.size(); ++k, h += stride_h) {
      const Layer<T>& layer = layers_[k];
      if (k > 0) {
        matvec(layer.w_ih, x, layer.b_ih, gx, 3 * H, H);
      } else if (embedding_ != nullptr) {
        matvec(layer.w_ih, embedding_ + token * layer.inputs, layer.b_ih, gx, 3 * H,
               layer.inputs);
      } else {  // one-hot: W_ih x is column `token` of W_ih
        for (int64_t j = 0; j < 3 * H; ++j) {
          gx[j] = layer.w_ih[j * layer.inputs + token] + layer.b_ih[j];
        }
      }
      matvec(layer.w_hh, h, layer.b_hh, gh, reset_after_ ? 3 * H : 2 * H, H);
      const T* R = gx;  // σ in place: gx_r and gx_z become R and Z
      const T* Z = gx + H;
      for (int64_t j = 0; j < 2 * H; ++j) gx[j] = grulm::sigmoid(gx[j] + gh[j]);
      if (reset_after_) {
        for (int64_t j = 0; j < H; ++j) {
          cand[j] = grulm::tanh_(gx[2 * H + j] + R[j] * gh[2 * H + j]);
        }
      } else {
        for (int64_t j = 0; j < H; ++j) rh[j] = R[j] * h[j];
        matvec(layer.w_hh + 2 * H * H, rh, layer.b_hh + 2 * H, cand, H, H);
        for (int64_t j = 0; j < H; ++j) cand[j] = grulm::tanh_(gx[2 * H + j] + cand[j]);
      }
      for (int64_t j = 0; j < H; ++j) h[j] = Z[j] * h[j] + (1 - Z[j]) * cand[j];
      x = h;
    }
    matvec(head_w_, x, head_b_, logits, V_, H);
  }

 private:
  int64_t H_, V_ = 0;
  bool reset_after_;
  std::vector<T> scratch_;
  std::vector<Layer<T>> layers_;
  const T *head_w_ = nullptr, *head_b_ = nullptr, *embedding_ = nullptr;
};

template <typename T>
int64_t argmax(const T* row, int64_t V) {  // the first maximum, as torch.argmax
  int64_t best = 0;
  for (int64_t v = 1; v < V; ++v) {
    if (row[v] > row[best]) best = v;
  }
  return best;
}

void check_shape(const Tensor& t, std::initializer_list<int64_t> shape, const char* what) {
  TORCH_CHECK(t.sizes().equals(shape), "grulm decode: ", what, " must be ",
              c10::IntArrayRef(shape), ", got ", t.sizes());
}

// The weights, contiguous, after checking them against the state h (L, N, H).
std::vector<Tensor> checked_weights(const std::vector<Tensor>& weights, const Tensor& h) {
  TORCH_CHECK(h.device().is_cpu() && h.dim() == 3, "grulm decode: h must be (L, N, H) on the CPU");
  TORCH_CHECK(h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble,
              "grulm decode: float32 or float64 only, got ", h.scalar_type());
  const int64_t L = h.size(0), H = h.size(2);
  const int64_t count = static_cast<int64_t>(weights.size());
  TORCH_CHECK(count == 4 * L + 2 || count == 4 * L + 3, "grulm decode: ", count,
              " weights do not make ", L, " layers and a head (and an embedding)");
  std::vector<Tensor> out;
  for (const Tensor& w : weights) {
    TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == h.scalar_type(),
                "grulm decode: every weight must be a CPU tensor of h's dtype");
    out.push_back(w.contiguous());
  }
  const int64_t V = out[4 * L].size(0);
  for (int64_t k = 0; k < L; ++k) {
    const int64_t I = k > 0 ? H : count > 4 * L + 2 ? out[4 * L + 2].size(1) : V;
    check_shape(out[4 * k], {3 * H, I}, "weight_ih");
    check_shape(out[4 * k + 1], {3 * H, H}, "weight_hh");
    check_shape(out[4 * k + 2], {3 * H}, "bias_ih");
    check_shape(out[4 * k + 3], {3 * H}, "bias_hh");
  }
  check_shape(out[4 * L], {V, H}, "the head's weight");
  check_shape(out[4 * L + 1], {V}, "the head's bias");
  if (count > 4 * L + 2) check_shape(out[4 * L + 2], {V, out[0].size(1)}, "the embedding");
  return out;
}

// The ids, (N,) or (N, T) int64 in [0, V), contiguous: N·T tokens, each row's in order.
Tensor checked_ids(const Tensor& ids, const Tensor& h, int64_t V) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && (ids.dim() == 1 || ids.dim() == 2) &&
                  ids.size(0) == h.size(1) && ids.numel() >= h.size(1),
              "grulm decode: ids must be (N,) or (N, T) int64 with N = h.size(1) and T >= 1");
  Tensor tokens = ids.contiguous();
  const int64_t* token = tokens.data_ptr<int64_t>();
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    TORCH_CHECK(token[i] >= 0 && token[i] < V, "grulm decode: token id ", token[i],
                " out of range [0, ", V, ")");
  }
  return tokens;
}

// Feeds each of the N sequences its T tokens in order from its state in h_out (L, N, H),
// updated in place; then greedy_steps times takes its argmax into chosen (N, greedy_steps) and,
// except after the last, feeds it back. logits (N, V) ends with the logits after the last
// token fed.
void run(const std::vector<Tensor>& weights, const Tensor& tokens, Tensor& h_out,
         Tensor& logits, Tensor& chosen, bool reset_after, int64_t greedy_steps) {
  const int64_t L = h_out.size(0), N = h_out.size(1), H = h_out.size(2);
  if (N == 0) return;
  const int64_t T = tokens.numel() / N, V = logits.size(1);
  const int64_t* token = tokens.data_ptr<int64_t>();
  grulm::dispatch_floating(h_out.scalar_type(), [&](auto zero) {
    using S = decltype(zero);
    Model<S> model(weights, L, H, reset_after);
    S* state = h_out.data_ptr<S>();
    for (int64_t n = 0; n < N; ++n) {
      S* row = logits.data_ptr<S>() + n * V;
      for (int64_t t = 0; t < T; ++t) model.step(token[n * T + t], state + n * H, N * H, row);
      int64_t* out = greedy_steps > 0 ? chosen.data_ptr<int64_t>() + n * greedy_steps : nullptr;
      for (int64_t s = 0; s < greedy_steps; ++s) {
        out[s] = argmax(row, V);
        if (s + 1 < greedy_steps) model.step(out[s], state + n * H, N * H, row);
      }
    }
  });
}

// One step (ids (N,)) or T steps in order (ids (N, T)): the logits (N, V) after the last token
// and the states then (L, N, H).
std::tuple<Tensor, Tensor> decode_step(const std::vector<Tensor>& weights, const Tensor& ids,
                                       const Tensor& h, bool reset_after) {
  const std::vector<Tensor> checked = checked_weights(weights, h);
  const int64_t V = checked[4 * h.size(0)].size(0);
  const Tensor tokens = checked_ids(ids, h, V);
  Tensor h_out = h.contiguous().clone();
  Tensor logits = at::empty({h.size(1), V}, h.options());
  Tensor none;
  run(checked, tokens, h_out, logits, none, reset_after, 0);
  return {logits, h_out};
}

// A whole greedy run: feed ids (N,), then `steps` times feed back the argmax, except the last.
// Returns the chosen tokens (N, steps) and the states after the last token fed (L, N, H).
std::tuple<Tensor, Tensor> decode_greedy(const std::vector<Tensor>& weights, const Tensor& ids,
                                         const Tensor& h, bool reset_after, int64_t steps) {
  TORCH_CHECK(ids.dim() == 1 && steps >= 1, "grulm decode: greedy takes ids (N,) and steps >= 1");
  const std::vector<Tensor> checked = checked_weights(weights, h);
  const int64_t V = checked[4 * h.size(0)].size(0);
  const Tensor tokens = checked_ids(ids, h, V);
  Tensor h_out = h.contiguous().clone();
  Tensor logits = at::empty({h.size(1), V}, h.options());
  Tensor chosen = at::empty({h.size(1), steps}, ids.options());
  run(checked, tokens, h_out, logits, chosen, reset_after, steps);
  return {chosen, h_out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def("decode_step(Tensor[] weights, Tensor ids, Tensor h, bool reset_after) -> "
        "(Tensor, Tensor)");
  m.def("decode_greedy(Tensor[] weights, Tensor ids, Tensor h, bool reset_after, int steps) "
        "-> (Tensor, Tensor)");
  m.impl("decode_step", c10::DispatchKey::CPU, &decode_step);
  m.impl("decode_greedy", c10::DispatchKey::CPU, &decode_greedy);
}
