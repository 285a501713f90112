// Bindings of the attention kernels into fasttrain._C.attn. Addresses, strides (in elements) and
// sizes that fasttrain/ops/attention.py has validated; the GIL is released while the kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>

#include "../bindings.h"
#include "attn.h"

namespace py = pybind11;

namespace {

using Strides = std::array<int64_t, 3>;  // (b, h, t) strides of a (B, H, T, D) tensor; d has stride 1

ft::attn::View view(uintptr_t p, const Strides& s, const char* what) {
  if (p == 0) throw std::invalid_argument(std::string("null data pointer for ") + what);
  return {reinterpret_cast<void*>(p), s[0], s[1], s[2]};
}

ft::attn::Args make_args(int64_t B, int64_t H, int64_t T, int64_t D, int dtype, double scale, bool causal) {
  if (B < 1 || H < 1 || T < 1 || D < 1) throw std::invalid_argument("attention: empty shape");
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("attention: bad dtype code");
  ft::attn::Args a{};
  a.B = B, a.H = H, a.T = T, a.D = D;
  a.dt = ft::DType(dtype);
  a.scale = float(scale);
  a.causal = causal;
  return a;
}

}  // namespace

namespace ft {

void bind_attn(py::module_ m) {
  m.def(
      "forward",
      [](uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, uintptr_t o, Strides os,
         uintptr_t lse, int64_t B, int64_t H, int64_t T, int64_t D, int dtype, double scale, bool causal,
         int threads) {
        attn::Args a = make_args(B, H, T, D, dtype, scale, causal);
        a.q = view(q, qs, "q"), a.k = view(k, ks, "k"), a.v = view(v, vs, "v"), a.o = view(o, os, "out");
        if (lse == 0) throw std::invalid_argument("null data pointer for lse");
        a.lse = reinterpret_cast<float*>(lse);
        py::gil_scoped_release nogil;
        attn::kernels().forward(a, threads);
      },
      "out = softmax(scale q k^T [causal mask]) v and the rows' log2 normalizers into lse (B*H, T) fp32");
  m.def(
      "backward",
      [](uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, uintptr_t o, Strides os,
         uintptr_t dout, Strides dos, uintptr_t lse, uintptr_t dq, Strides dqs, uintptr_t dk, Strides dks, uintptr_t dv,
         Strides dvs, int64_t B, int64_t H, int64_t T, int64_t D, int dtype, double scale, bool causal, int threads) {
        attn::Args a = make_args(B, H, T, D, dtype, scale, causal);
        a.q = view(q, qs, "q"), a.k = view(k, ks, "k"), a.v = view(v, vs, "v"), a.o = view(o, os, "out");
        a.dout = view(dout, dos, "grad_out");
        a.dq = view(dq, dqs, "grad_q"), a.dk = view(dk, dks, "grad_k"), a.dv = view(dv, dvs, "grad_v");
        if (lse == 0) throw std::invalid_argument("null data pointer for lse");
        a.lse = reinterpret_cast<float*>(lse);
        py::gil_scoped_release nogil;
        attn::kernels().backward(a, threads);
      },
      "grad_q, grad_k, grad_v of forward() from grad_out, out and lse");
  m.def("kernel_isa", []() { return std::string(attn::kernels().name); });
}

}  // namespace ft
