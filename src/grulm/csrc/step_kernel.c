/* One decoding step of a GRU stack in plain C, for grulm.generate.GRUStepDecoder.
 *
 * The layout and algebra are the decoder's (its NumPy step is the readable reference and the
 * test oracle): per layer k,
 *
 *   x      (N, 3H)   the layer's input projection x W_ih^T + b (r and z columns negated)
 *   gh     (N, G)    h W_hh^T + b_hh for this step's gates, computed at the previous step
 *                    (G = 2H reset-before, 3H reset-after; r and z negated)
 *   R, Z   = 1 / (1 + exp(x_rz + gh_rz))                         (σ of the negated sums)
 *   H~     = tanh(x_n + R ⊙ gh_n)                                 reset-after
 *          = tanh(x_n + (R ⊙ h) W_hn)                             reset-before
 *   h      = H~ + Z ⊙ (h − H~)
 *   out    = h W_out + b_out = [next step's gh | next layer's x, or the logits]
 *
 * Single-stream decoding is bound by per-call overhead in Python; here a whole step is one
 * call and the matrix-vector products stream each weight row once (axpy order, which the
 * compiler vectorises). Built and loaded by grulm.step_kernel; float and double versions.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t layers, batch, hidden, vocab, reset_after;
    const void *table;    /* (V, 3H) */
    const void **w_out;   /* per layer (H, G + O_k), O_k = 3H below the top, V at the top */
    const void **b_out;   /* per layer (G + O_k) */
    const void **w_hn;    /* per layer (H, H), reset-before only */
    void **h;             /* per layer (N, H), updated in place */
    void **gh;            /* per layer (N, G), updated in place */
    void *x;              /* scratch (N, 3H) */
    void *work;           /* scratch (3H + G + max(3H, V)) */
} Stack;

#define DEFINE_STEP(T, SUFFIX, EXP, TANH)                                                       \
    /* out (M) = b + v (K) W (K, M), W row-major: axpy order, four rows of W per pass over    \
       out so that out is loaded and stored once per four rows (vectorised over j). */          \
    static void matvec_##SUFFIX(const T *restrict v, const T *restrict W,                      \
                                const T *restrict b, T *restrict out, int64_t K, int64_t M) {   \
        memcpy(out, b, (size_t)M * sizeof(T));                                                  \
        int64_t i = 0;                                                                          \
        for (; i + 4 <= K; i += 4) {                                                            \
            const T a0 = v[i], a1 = v[i + 1], a2 = v[i + 2], a3 = v[i + 3];                     \
            const T *r0 = W + i * M, *r1 = r0 + M, *r2 = r1 + M, *r3 = r2 + M;                  \
            for (int64_t j = 0; j < M; ++j)                                                     \
                out[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j];                    \
        }                                                                                       \
        for (; i < K; ++i) {                                                                    \
            const T a = v[i];                                                                   \
            const T *row = W + i * M;                                                           \
            for (int64_t j = 0; j < M; ++j) out[j] += a * row[j];                               \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* Feed tokens (N,); write the next-token logits (N, V). */                                 \
    void grulm_step_##SUFFIX(const Stack *s, const int64_t *tokens, T *logits) {                \
        const int64_t N = s->batch, H = s->hidden, V = s->vocab;                                \
        const int64_t G = s->reset_after ? 3 * H : 2 * H;                                       \
        T *x = (T *)s->x, *work = (T *)s->work;                                                 \
        T *rz = work, *cand = work + 2 * H, *out = work + 3 * H;                                \
        const T *table = (const T *)s->table;                                                   \
        for (int64_t n = 0; n < N; ++n)                                                         \
            memcpy(x + n * 3 * H, table + tokens[n] * 3 * H, (size_t)(3 * H) * sizeof(T));     \
        for (int64_t k = 0; k < s->layers; ++k) {                                               \
            const int64_t width = G + (k + 1 < s->layers ? 3 * H : V);                         \
            for (int64_t n = 0; n < N; ++n) {                                                   \
                T *h = (T *)s->h[k] + n * H, *gh = (T *)s->gh[k] + n * G;                       \
                T *xn = x + n * 3 * H;                                                          \
                for (int64_t j = 0; j < 2 * H; ++j) rz[j] = 1 / (1 + EXP(xn[j] + gh[j]));       \
                if (s->reset_after) {                                                           \
                    for (int64_t j = 0; j < H; ++j)                                             \
                        cand[j] = TANH(xn[2 * H + j] + rz[j] * gh[2 * H + j]);                  \
                } else {                                                                        \
                    T *rh = out; /* R ⊙ h, before out is needed */                              \
                    for (int64_t j = 0; j < H; ++j) rh[j] = rz[j] * h[j];                       \
                    matvec_##SUFFIX(rh, (const T *)s->w_hn[k], xn + 2 * H, cand, H, H);         \
                    for (int64_t j = 0; j < H; ++j) cand[j] = TANH(cand[j]);                    \
                }                                                                               \
                for (int64_t j = 0; j < H; ++j) h[j] = cand[j] + rz[H + j] * (h[j] - cand[j]);  \
                matvec_##SUFFIX(h, (const T *)s->w_out[k], (const T *)s->b_out[k], out, H,      \
                                width);                                                         \
                memcpy(gh, out, (size_t)G * sizeof(T));                                         \
                if (k + 1 < s->layers)                                                          \
                    memcpy(xn, out + G, (size_t)(3 * H) * sizeof(T));                           \
                else                                                                            \
                    memcpy(logits + n * V, out + G, (size_t)V * sizeof(T));                     \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* The warm-up: feed tokens (count,) to one sequence (N = 1) in order; logits (V) after   \
       the last. One call for the whole prefix instead of one per token. */                    \
    void grulm_prefill_##SUFFIX(const Stack *s, const int64_t *tokens, int64_t count,          \
                                T *logits) {                                                    \
        for (int64_t t = 0; t < count; ++t) grulm_step_##SUFFIX(s, tokens + t, logits);        \
    }                                                                                           \
                                                                                                \
    /* Greedy decoding: feed tokens (N,), then steps times take the argmax (first maximum, as   \
       torch.argmax) and feed it back; out (N, steps) gets the chosen tokens. */                \
    void grulm_greedy_##SUFFIX(const Stack *s, const int64_t *tokens, int64_t steps,           \
                               int64_t *out, int64_t *next, T *logits) {                        \
        const int64_t N = s->batch, V = s->vocab;                                               \
        memcpy(next, tokens, (size_t)N * sizeof(int64_t));                                      \
        for (int64_t t = 0; t < steps; ++t) {                                                   \
            grulm_step_##SUFFIX(s, next, logits);                                               \
            for (int64_t n = 0; n < N; ++n) {                                                   \
                const T *row = logits + n * V;                                                  \
                int64_t best = 0;                                                               \
                for (int64_t v = 1; v < V; ++v)                                                 \
                    if (row[v] > row[best]) best = v;                                           \
                next[n] = best;                                                                 \
                out[n * steps + t] = best;                                                      \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_STEP(float, f32, expf, tanhf)
DEFINE_STEP(double, f64, exp, tanh)
