// Bindings of the quant kernels into fasttrain._C.quant. Addresses and sizes only: fasttrain/ops/quant.py
// has validated dtypes, shapes, contiguity and aliasing; the checks here only guard the private module.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "../bindings.h"
#include "quant_driver.h"

namespace py = pybind11;

namespace {

void check_dims(int64_t M, int64_t K, int64_t N, int64_t Kp) {
  if (M < 0 || N < 0 || K < 1 || Kp < K || Kp % ft::quant::kAlignK != 0 || Kp - K >= ft::quant::kAlignK * 1024)
    throw std::invalid_argument("invalid dimensions M=" + std::to_string(M) + " K=" + std::to_string(K) +
                                " N=" + std::to_string(N) + " Kp=" + std::to_string(Kp));
}

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

namespace ft {

void bind_quant(py::module_ m) {
  m.def("kernel_path", [] { return std::string(ft::quant::table().name); },
        "Which quant kernels the current ISA selection runs: avx512vnni | avx2 | scalar.");
  m.attr("align_k") = ft::quant::kAlignK;
  m.def(
      "int8_dynamic_linear",
      [](uintptr_t x, bool x_bf16, int64_t M, int64_t K, uintptr_t w, uintptr_t sw, uintptr_t wsum, uintptr_t bias,
         uintptr_t y, int64_t N, int64_t Kp, int threads) {
        check_dims(M, K, N, Kp);
        py::gil_scoped_release nogil;
        ft::quant::int8_dynamic_linear(ptr<const void>(x), x_bf16, M, K, ptr<const int8_t>(w), ptr<const float>(sw),
                                       ptr<const int32_t>(wsum), ptr<const float>(bias), ptr<float>(y), N, Kp, threads);
      },
      py::arg("x"), py::arg("x_bf16"), py::arg("M"), py::arg("K"), py::arg("w"), py::arg("w_scale"), py::arg("w_sum"),
      py::arg("bias"), py::arg("y"), py::arg("N"), py::arg("Kp"), py::arg("threads"));

  m.def(
      "int8_weight_linear",
      [](uintptr_t x, bool x_bf16, int64_t M, int64_t K, uintptr_t w, uintptr_t sw, uintptr_t bias, uintptr_t y,
         int64_t N, int64_t Kp, int threads) {
        check_dims(M, K, N, Kp);
        py::gil_scoped_release nogil;
        ft::quant::int8_weight_linear(ptr<const void>(x), x_bf16, M, K, ptr<const int8_t>(w), ptr<const float>(sw),
                                      ptr<const float>(bias), ptr<float>(y), N, Kp, threads);
      },
      py::arg("x"), py::arg("x_bf16"), py::arg("M"), py::arg("K"), py::arg("w"), py::arg("w_scale"), py::arg("bias"),
      py::arg("y"), py::arg("N"), py::arg("Kp"), py::arg("threads"));

  m.def(
      "int4_weight_linear",
      [](uintptr_t x, bool x_bf16, int64_t M, int64_t K, uintptr_t w, uintptr_t s, bool s_bf16, int64_t group,
         uintptr_t bias, uintptr_t y, int64_t N, int64_t Kp, int threads) {
        check_dims(M, K, N, Kp);
        if (group < ft::quant::kAlignK || group % ft::quant::kAlignK != 0 || Kp % group != 0 || group > 4096)
          throw std::invalid_argument("group must be a multiple of 64 (at most 4096) that divides Kp");
        py::gil_scoped_release nogil;
        ft::quant::int4_weight_linear(ptr<const void>(x), x_bf16, M, K, ptr<const uint8_t>(w), ptr<const void>(s),
                                      s_bf16, group, ptr<const float>(bias), ptr<float>(y), N, Kp, threads);
      },
      py::arg("x"), py::arg("x_bf16"), py::arg("M"), py::arg("K"), py::arg("w"), py::arg("w_scale"),
      py::arg("scale_bf16"), py::arg("group_size"), py::arg("bias"), py::arg("y"), py::arg("N"), py::arg("Kp"),
      py::arg("threads"));
}

}  // namespace ft
