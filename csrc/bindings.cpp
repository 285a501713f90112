// The module definition of fasttrain._C (private: use fasttrain.ops and the feature packages).
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fasttrain's torch-free C++ core (private: use fasttrain.ops)";
  m.attr("__version__") = FT_VERSION;
  m.attr("compiler") = __VERSION__;
  ft::bind_core(m);
  ft::bind_io(m);
  ft::bind_optim(m.def_submodule("optim", "fused optimizer kernels"));
  ft::bind_data(m.def_submodule("data", "data loading kernels"));
  ft::bind_quant(m.def_submodule("quant", "quantized inference kernels"));
  ft::bind_attn(m.def_submodule("attn", "attention kernels (CPU)"));
  ft::apply_isa_env();
}
