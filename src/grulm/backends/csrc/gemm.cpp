// The op behind the input projection of features and its gradients (grulm.backends.cpu): a
// matrix product on grulm's tiles, in float32 (gemm_f32.h) or from bfloat16-rounded operands
// (gemm_bf16.h).

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "block_pool.h"
#include "gemm_bf16.h"
#include "gemm_f32.h"

namespace {

// a (M, K) · b (K, N) → (M, N) of a's dtype; with bf16 (float32 only), from bf16-rounded
// operands with float32 accumulation and output.
at::Tensor mm(const at::Tensor& a, const at::Tensor& b, bool bf16) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
              "grulm cpu backend: mm needs (M, K) and (K, N) matrices");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(),
              "grulm cpu backend: tensors must be on the CPU");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                  (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
              "grulm cpu backend: mm takes two float32 or two float64 matrices");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor c = grulm::pooled_empty({a.size(0), b.size(1)}, a.options());
  if (bf16) {
    grulm::gemm_bf16(a, b, c, false);
  } else {
    grulm::gemm_f32(a, b, c, false);
  }
  return c;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def("mm(Tensor a, Tensor b, *, bool bf16=False) -> Tensor");
  m.impl("mm", c10::DispatchKey::CPU, &mm);
}
