// Bindings of the data kernels into fasttrain._C.data. Addresses and sizes only: the checks that
// matter (dtypes, shapes, bounds of every index) are done by fasttrain/ops/data.py before a call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "../bindings.h"
#include "../dispatch.h"
#include "data.h"

namespace py = pybind11;

namespace ft {

void bind_data(py::module_ m) {
  using data::FieldPlan;
  py::class_<FieldPlan>(m, "FieldPlan")
      .def(py::init<>())
      .def_readwrite("kind", &FieldPlan::kind)
      .def_readwrite("base", &FieldPlan::base)
      .def_readwrite("row_stride", &FieldPlan::row_stride)
      .def_readwrite("row_bytes", &FieldPlan::row_bytes)
      .def_readwrite("out_row_bytes", &FieldPlan::out_row_bytes)
      .def_readwrite("src_code", &FieldPlan::src_code)
      .def_readwrite("dst_code", &FieldPlan::dst_code)
      .def_readwrite("count", &FieldPlan::count)
      .def_readwrite("H", &FieldPlan::H)
      .def_readwrite("W", &FieldPlan::W)
      .def_readwrite("C", &FieldPlan::C)
      .def_readwrite("out_h", &FieldPlan::out_h)
      .def_readwrite("out_w", &FieldPlan::out_w)
      .def_readwrite("pad", &FieldPlan::pad)
      .def_readwrite("random_crop", &FieldPlan::random_crop)
      .def_readwrite("flip", &FieldPlan::flip)
      .def_readwrite("chw", &FieldPlan::chw)
      .def_readwrite("out_dtype", &FieldPlan::out_dtype)
      .def_readwrite("mean", &FieldPlan::mean)
      .def_readwrite("std", &FieldPlan::std)
      .def_readwrite("salt", &FieldPlan::salt);

  m.def("kernel_name", [] { return std::string(data::kernels().name); }, "ISA path of the normalize kernel.");

  m.def(
      "sample_indices",
      [](uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle, int64_t rank, int64_t world, int64_t start,
         int64_t count, uintptr_t out) {
        if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("need 0 <= rank < world");
        if (start < 0 || count < 0 || (count > 0 && uint64_t((start + count - 1) * world + rank) >= n))
          throw std::invalid_argument("positions out of range");
        py::gil_scoped_release nogil;
        data::sample_indices(n, seed, epoch, shuffle, rank, world, start, count, reinterpret_cast<int64_t*>(out));
      },
      py::arg("n"), py::arg("seed"), py::arg("epoch"), py::arg("shuffle"), py::arg("rank"), py::arg("world"),
      py::arg("start"), py::arg("count"), py::arg("out"));

  m.def(
      "augment_params",
      [](const FieldPlan& p, uint64_t seed, uint64_t epoch, int64_t index) {
        const auto a = data::draw_augment(p, seed, epoch, index);
        return py::make_tuple(a.oy, a.ox, a.flip);
      },
      py::arg("plan"), py::arg("seed"), py::arg("epoch"), py::arg("index"));

  m.def(
      "fill_batch",
      [](const std::vector<FieldPlan>& plans, const std::vector<uintptr_t>& outs, uintptr_t idx, int64_t n,
         uint64_t seed, uint64_t epoch, int threads) {
        if (plans.size() != outs.size()) throw std::invalid_argument("plans and outs must have the same length");
        py::gil_scoped_release nogil;
        data::fill_batch(plans, outs, reinterpret_cast<const int64_t*>(idx), n, seed, epoch, threads);
      },
      py::arg("plans"), py::arg("outs"), py::arg("idx"), py::arg("n"), py::arg("seed"), py::arg("epoch"),
      py::arg("threads"));

  m.def(
      "gather_windows",
      [](uintptr_t tokens, int src_code, uintptr_t starts, int64_t n, int64_t block, uintptr_t x, uintptr_t y,
         int threads) {
        py::gil_scoped_release nogil;
        data::gather_windows(tokens, src_code, reinterpret_cast<const int64_t*>(starts), n, block,
                             reinterpret_cast<int64_t*>(x), reinterpret_cast<int64_t*>(y), threads);
      },
      py::arg("tokens"), py::arg("src_code"), py::arg("starts"), py::arg("n"), py::arg("block"), py::arg("x"),
      py::arg("y"), py::arg("threads"));
}

}  // namespace ft
