// The op behind the bf16 input projection of features and its gradients (grulm.backends.cpu):
// a float32 matrix product of bfloat16-rounded operands (gemm_bf16.h).

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gemm_bf16.h"

namespace {

// a (M, K) · b (K, N) → (M, N) float32, from bf16-rounded operands.
at::Tensor mm_bf16(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
              "grulm cpu backend: mm_bf16 needs (M, K) and (K, N) matrices");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(),
              "grulm cpu backend: tensors must be on the CPU");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::Tensor c = at::empty({a.size(0), b.size(1)}, a.options());
  grulm::gemm_bf16(a, b, c, false);
  return c;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def("mm_bf16(Tensor a, Tensor b) -> Tensor");
  m.impl("mm_bf16", c10::DispatchKey::CPU, &mm_bf16);
}
