// Activations for the fused CPU kernels, written so that loops over them vectorise.

#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace grulm {

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
inline float exp_(float x) { return exp_approx(x); }
inline double exp_(double x) { return std::exp(x); }

}  // namespace grulm
