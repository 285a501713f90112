// Bindings of the core: ISA selection and the multi-tensor norm/clip kernels. Deliberately thin:
// tensors never cross this boundary, only addresses, element counts and dtype codes that
// fasttrain/ops has already validated. The checks here are a last line of defence against misuse
// of the private module, not the user-facing ones.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "bindings.h"
#include "dispatch.h"
#include "multi_tensor.h"

namespace py = pybind11;

namespace {

std::vector<ft::TensorRef> make_refs(const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& numels,
                                     const std::vector<int>& dtypes) {
  if (ptrs.size() != numels.size() || ptrs.size() != dtypes.size())
    throw std::invalid_argument("ptrs, numels and dtypes must have the same length");
  std::vector<ft::TensorRef> refs(ptrs.size());
  for (size_t i = 0; i < ptrs.size(); ++i) {
    if (dtypes[i] < 0 || dtypes[i] > 2) throw std::invalid_argument("invalid dtype code " + std::to_string(dtypes[i]));
    if (numels[i] < 0) throw std::invalid_argument("negative numel");
    if (numels[i] > 0 && ptrs[i] == 0) throw std::invalid_argument("null data pointer");
    refs[i] = {reinterpret_cast<void*>(ptrs[i]), numels[i], ft::DType(dtypes[i])};
  }
  return refs;
}

void check_norm_type(double p) {
  if (p != 2.0 && !(std::isinf(p) && p > 0))
    throw std::invalid_argument("norm_type must be 2 or inf, got " + std::to_string(p));
}

}  // namespace

namespace ft {

void bind_core(py::module_ m) {
  m.def("isa", [] { return std::string(ft::isa_name(ft::current_isa())); }, "The active ISA path.");
  m.def("available_isas", &ft::available_isas, "ISA paths this CPU can run, best first.");
  m.def("set_isa", &ft::set_isa, py::arg("name"),
        "Select the ISA path: avx512 | avx2 | scalar | auto. Raises ValueError if the CPU lacks it.");
  m.def("omp_max_threads", [] { return omp_get_max_threads(); });

  m.def(
      "multi_tensor_norm",
      [](const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& numels, const std::vector<int>& dtypes,
         double norm_type, int threads) {
        check_norm_type(norm_type);
        const auto refs = make_refs(ptrs, numels, dtypes);
        py::gil_scoped_release nogil;
        return ft::multi_tensor_norm(refs, norm_type, threads);
      },
      py::arg("ptrs"), py::arg("numels"), py::arg("dtypes"), py::arg("norm_type"), py::arg("threads"));

  m.def(
      "multi_tensor_scale_",
      [](const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& numels, const std::vector<int>& dtypes,
         float scale, int threads) {
        const auto refs = make_refs(ptrs, numels, dtypes);
        py::gil_scoped_release nogil;
        ft::multi_tensor_scale(refs, scale, threads);
      },
      py::arg("ptrs"), py::arg("numels"), py::arg("dtypes"), py::arg("scale"), py::arg("threads"));

  m.def(
      "clip_by_total_norm_",
      [](const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& numels, const std::vector<int>& dtypes,
         double max_norm, double norm_type, bool skip_if_nonfinite, int threads) {
        check_norm_type(norm_type);
        const auto refs = make_refs(ptrs, numels, dtypes);
        py::gil_scoped_release nogil;
        return ft::clip_by_total_norm(refs, max_norm, norm_type, skip_if_nonfinite, threads);
      },
      py::arg("ptrs"), py::arg("numels"), py::arg("dtypes"), py::arg("max_norm"), py::arg("norm_type"),
      py::arg("skip_if_nonfinite"), py::arg("threads"));
}

void apply_isa_env() {
  // The environment override is applied once, at import; an invalid value fails the import with a
  // message that says what to set instead.
  if (const char* env = std::getenv("FASTTRAIN_ISA")) {
    try {
      set_isa(env);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("FASTTRAIN_ISA: ") + e.what());
    }
  }
}

}  // namespace ft
