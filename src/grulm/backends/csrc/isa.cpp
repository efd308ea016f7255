// The ops that choose the kernels' instruction set (isa.h): what this CPU runs best, which path
// is in use, and setting it (done once by grulm.backends.cpu when the extension loads).

#include <torch/library.h>

#include <string>

#include "isa.h"

namespace {

std::string isa_best() { return grulm::isa_name(grulm::best_isa()); }

std::string isa_active() { return grulm::isa_name(grulm::active_isa()); }

void set_isa(const std::string& name) {
  for (const grulm::Isa isa : {grulm::Isa::kGeneric, grulm::Isa::kAvx2, grulm::Isa::kAvx512,
                               grulm::Isa::kAvx512Bf16}) {
    if (name != grulm::isa_name(isa)) continue;
    TORCH_CHECK(isa <= grulm::best_isa(), "grulm cpu backend: this CPU cannot run the '", name,
                "' kernels (the best it runs is '", isa_best(), "')");
    grulm::set_active_isa(isa);
    return;
  }
  TORCH_CHECK(false, "grulm cpu backend: unknown instruction set '", name,
              "' (one of avx512-bf16, avx512, avx2, generic)");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grulm_cpu, m) {
  m.def("isa_best() -> str", &isa_best);
  m.def("isa_active() -> str", &isa_active);
  m.def("set_isa(str name) -> ()", &set_isa);
}
