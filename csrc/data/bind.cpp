// Bindings of the data kernels into fasttrain._C.data. Addresses and sizes only: the checks that
// matter (dtypes, shapes, bounds of every index) are done by fasttrain/ops/data.py before a call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "../bindings.h"
#include "../dispatch.h"
#include "data.h"
#include "producer.h"

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

  using data::Producer;
  using data::ProducerSpec;
  py::class_<ProducerSpec>(m, "ProducerSpec")
      .def(py::init<>())
      .def_readwrite("n", &ProducerSpec::n)
      .def_readwrite("seed", &ProducerSpec::seed)
      .def_readwrite("epoch", &ProducerSpec::epoch)
      .def_readwrite("shuffle", &ProducerSpec::shuffle)
      .def_readwrite("rank", &ProducerSpec::rank)
      .def_readwrite("world", &ProducerSpec::world)
      .def_readwrite("batch_size", &ProducerSpec::batch_size)
      .def_readwrite("rank_samples", &ProducerSpec::rank_samples)
      .def_readwrite("first", &ProducerSpec::first)
      .def_readwrite("end", &ProducerSpec::end)
      .def_readwrite("plans", &ProducerSpec::plans)
      .def_readwrite("windows", &ProducerSpec::windows)
      .def_readwrite("tokens", &ProducerSpec::tokens)
      .def_readwrite("token_code", &ProducerSpec::token_code)
      .def_readwrite("block", &ProducerSpec::block)
      .def_readwrite("phase", &ProducerSpec::phase)
      .def_readwrite("threads", &ProducerSpec::threads)
      .def_readwrite("slots", &ProducerSpec::slots)
      .def_readwrite("fault_batch", &ProducerSpec::fault_batch)
      .def_readwrite("fault_kind", &ProducerSpec::fault_kind);

  // The consumer waits in slices with the GIL released and checks for signals between them, so
  // Ctrl-C interrupts a loop blocked on data (KeyboardInterrupt) instead of hanging it.
  constexpr int kSliceMs = 50;
  py::class_<Producer>(m, "Producer")
      .def(py::init<ProducerSpec, std::vector<std::vector<uintptr_t>>>(), py::arg("spec"), py::arg("outs"))
      .def(
          "wait",
          [](Producer& p, int64_t b) {
            for (;;) {
              int r;
              {
                py::gil_scoped_release nogil;
                r = p.wait(b, kSliceMs);
              }
              if (r != 0) return r > 0;
              if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            }
          },
          py::arg("b"),
          "True once batch b is ready, False if stopped; raises the error that filling it raised.")
      .def("release", &Producer::release, py::arg("b"), py::arg("new_outs"))
      .def("kick", &Producer::kick)
      .def(
          "shared",
          [](Producer& p) {
            // A view of the shared words; the caller keeps the Producer alive while it uses it.
            return py::memoryview::from_buffer(p.shared(), {p.shared_size()}, {int64_t(sizeof(int64_t))});
          },
          "memoryview (int64) of the shared words: per slot the batch it holds, then released, claim, polling.")
      .def("stop", &Producer::stop, py::call_guard<py::gil_scoped_release>())
      .def("join", &Producer::join, py::call_guard<py::gil_scoped_release>())
      .def("ready", &Producer::ready)
      .def("wait_idle", &Producer::wait_idle, py::arg("timeout_ms"), py::call_guard<py::gil_scoped_release>())
      .def("wait_exit", &Producer::wait_exit, py::arg("timeout_ms"), py::call_guard<py::gil_scoped_release>())
      .def("wait_consumer", &Producer::wait_consumer, py::arg("timeout_ms"), py::call_guard<py::gil_scoped_release>())
      .def("running", &Producer::running)
      .def("rows", &Producer::rows, py::arg("b"));
  m.def("stop_all_producers", &Producer::stop_all, py::call_guard<py::gil_scoped_release>(),
        "Stops and joins every live loader producer (registered with atexit by fasttrain.data).");
}

}  // namespace ft
