// Bindings of the optim kernels into fasttrain._C.optim. Thin on purpose: addresses, element
// counts and scalars that fasttrain/ops/optim.py has validated; the checks here only guard the
// private module against null pointers and bad hyperparameter packs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "../bindings.h"
#include "optim.h"

namespace py = pybind11;

namespace {

template <class T>
T* ptr(uintptr_t a, int64_t n, const char* what) {
  if (n > 0 && a == 0) throw std::invalid_argument(std::string("null data pointer for ") + what);
  return reinterpret_cast<T*>(a);
}

// Host scalars in fp64, then fp32, as torch.optim.AdamW(foreach=False) computes them.
ft::optim::AdamWArgs make_args(double lr, double beta1, double beta2, double eps, double weight_decay, double step,
                               bool maximize, bool amsgrad, double grad_mul) {
  if (!(step >= 1)) throw std::invalid_argument("step must be >= 1");
  ft::optim::AdamWArgs a{};
  a.decay = float(1.0 - lr * weight_decay);
  a.one_minus_b1 = float(1.0 - beta1);
  a.beta2 = float(beta2);
  a.one_minus_b2 = float(1.0 - beta2);
  const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
  a.bc2_sqrt = float(std::sqrt(bc2));
  a.eps = float(eps);
  a.neg_step_size = float(-(lr / bc1));
  a.maximize = maximize;
  a.amsgrad = amsgrad;
  a.grad_mul = float(grad_mul);
  return a;
}

}  // namespace

namespace ft {

void bind_optim(py::module_ m) {
  m.def(
      "adamw_f32_",
      [](uintptr_t p, uintptr_t g, uintptr_t exp_avg, uintptr_t exp_avg_sq, uintptr_t max_exp_avg_sq, int64_t n,
         double lr, double beta1, double beta2, double eps, double weight_decay, double step, bool maximize,
         bool amsgrad, double grad_mul, int threads) {
        if (n < 0) throw std::invalid_argument("negative numel");
        if (amsgrad && n > 0 && max_exp_avg_sq == 0) throw std::invalid_argument("amsgrad needs max_exp_avg_sq");
        const optim::AdamWArgs a = make_args(lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_mul);
        float* pp = ptr<float>(p, n, "param");
        const float* gp = ptr<const float>(g, n, "grad");
        float* mp = ptr<float>(exp_avg, n, "exp_avg");
        float* vp = ptr<float>(exp_avg_sq, n, "exp_avg_sq");
        float* xp = amsgrad ? ptr<float>(max_exp_avg_sq, n, "max_exp_avg_sq") : nullptr;
        py::gil_scoped_release nogil;
        optim::adamw_f32(pp, gp, mp, vp, xp, n, a, threads);
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("max_exp_avg_sq"),
      py::arg("numel"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("step"), py::arg("maximize"), py::arg("amsgrad"), py::arg("grad_mul"), py::arg("threads"),
      "One fused AdamW step over flat fp32 buffers (torch.optim.AdamW semantics), in place.");

  m.def(
      "adamw_f32_multi_",
      [](const std::vector<uintptr_t>& p, const std::vector<uintptr_t>& g, const std::vector<uintptr_t>& exp_avg,
         const std::vector<uintptr_t>& exp_avg_sq, const std::vector<uintptr_t>& max_exp_avg_sq,
         const std::vector<int64_t>& n, double lr, double beta1, double beta2, double eps, double weight_decay,
         double step, bool maximize, bool amsgrad, double grad_mul, int threads) {
        const size_t nt = n.size();
        if (p.size() != nt || g.size() != nt || exp_avg.size() != nt || exp_avg_sq.size() != nt ||
            (amsgrad && max_exp_avg_sq.size() != nt))
          throw std::invalid_argument("adamw_f32_multi_: the pointer lists and numels differ in length");
        const optim::AdamWArgs a = make_args(lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_mul);
        std::vector<float*> pp(nt), mp(nt), vp(nt), xp(amsgrad ? nt : 0);
        std::vector<const float*> gp(nt);
        for (size_t t = 0; t < nt; ++t) {
          if (n[t] < 0) throw std::invalid_argument("negative numel");
          pp[t] = ptr<float>(p[t], n[t], "param");
          gp[t] = ptr<const float>(g[t], n[t], "grad");
          mp[t] = ptr<float>(exp_avg[t], n[t], "exp_avg");
          vp[t] = ptr<float>(exp_avg_sq[t], n[t], "exp_avg_sq");
          if (amsgrad) xp[t] = ptr<float>(max_exp_avg_sq[t], n[t], "max_exp_avg_sq");
        }
        py::gil_scoped_release nogil;
        optim::adamw_f32_multi(pp.data(), gp.data(), mp.data(), vp.data(), amsgrad ? xp.data() : nullptr, n.data(),
                               int64_t(nt), a, threads);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"),
      py::arg("numels"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("step"), py::arg("maximize"), py::arg("amsgrad"), py::arg("grad_mul"), py::arg("threads"),
      "One fused AdamW step over lists of fp32 tensors (addresses + numels), one schedule for all.");

  m.def(
      "adamw_linear_f32_",
      [](uintptr_t p, uintptr_t exp_avg, uintptr_t exp_avg_sq, uintptr_t max_exp_avg_sq, uintptr_t x, uintptr_t dy,
         int64_t rows, int64_t out_features, int64_t in_features, double lr, double beta1, double beta2, double eps,
         double weight_decay, double step, bool maximize, bool amsgrad, double grad_mul, int threads) {
        if (rows < 1 || rows > 64) throw std::invalid_argument("rows must be in [1, 64]");
        if (out_features < 0 || in_features < 0) throw std::invalid_argument("negative shape");
        const int64_t n = out_features * in_features;
        if (amsgrad && n > 0 && max_exp_avg_sq == 0) throw std::invalid_argument("amsgrad needs max_exp_avg_sq");
        const optim::AdamWArgs a = make_args(lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_mul);
        float* pp = ptr<float>(p, n, "param");
        float* mp = ptr<float>(exp_avg, n, "exp_avg");
        float* vp = ptr<float>(exp_avg_sq, n, "exp_avg_sq");
        float* xp = amsgrad ? ptr<float>(max_exp_avg_sq, n, "max_exp_avg_sq") : nullptr;
        const float* in = ptr<const float>(x, rows * in_features, "input");
        const float* go = ptr<const float>(dy, rows * out_features, "grad_output");
        py::gil_scoped_release nogil;
        optim::adamw_linear_f32(pp, mp, vp, xp, in, go, rows, out_features, in_features, a, threads);
      },
      py::arg("param"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("max_exp_avg_sq"), py::arg("input"),
      py::arg("grad_output"), py::arg("rows"), py::arg("out_features"), py::arg("in_features"), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("step"), py::arg("maximize"),
      py::arg("amsgrad"), py::arg("grad_mul"), py::arg("threads"),
      "One fused AdamW step of a Linear weight (out, in) whose gradient grad_output^T @ input is computed "
      "chunk by chunk inside the pass (never stored).");

  m.def(
      "adamw_mixed_",
      [](uintptr_t p, uintptr_t g, uintptr_t exp_avg, uintptr_t exp_avg_sq, uintptr_t max_exp_avg_sq, uintptr_t master,
         int64_t n, int param_dtype, int state_dtype, double lr, double beta1, double beta2, double eps,
         double weight_decay, double step, bool maximize, bool amsgrad, double grad_mul, bool stochastic, uint32_t seed,
         int threads) {
        if (n < 0) throw std::invalid_argument("negative numel");
        if (param_dtype < 0 || param_dtype > 2) throw std::invalid_argument("invalid param dtype code");
        if (state_dtype != int(DType::f32) && state_dtype != int(DType::bf16))
          throw std::invalid_argument("state dtype must be f32 or bf16");
        if (amsgrad && n > 0 && max_exp_avg_sq == 0) throw std::invalid_argument("amsgrad needs max_exp_avg_sq");
        if (stochastic && param_dtype != int(DType::bf16)) throw std::invalid_argument("stochastic rounding is bf16 only");
        optim::AdamWArgs a = make_args(lr, beta1, beta2, eps, weight_decay, step, maximize, amsgrad, grad_mul);
        a.stochastic = stochastic;
        a.seed = seed;
        optim::MixedBufs b{ptr<void>(p, n, "param"), ptr<const void>(g, n, "grad"), ptr<void>(exp_avg, n, "exp_avg"),
                           ptr<void>(exp_avg_sq, n, "exp_avg_sq"), amsgrad ? ptr<void>(max_exp_avg_sq, n, "max") : nullptr,
                           master ? reinterpret_cast<float*>(master) : nullptr, DType(param_dtype), DType(state_dtype)};
        py::gil_scoped_release nogil;
        optim::adamw_mixed(b, n, a, threads);
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("max_exp_avg_sq"),
      py::arg("master"), py::arg("numel"), py::arg("param_dtype"), py::arg("state_dtype"), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("step"),
      py::arg("maximize"), py::arg("amsgrad"), py::arg("grad_mul"), py::arg("stochastic"), py::arg("seed"),
      py::arg("threads"),
      "One fused AdamW step with fp32/fp16/bf16 params (+ optional fp32 masters) and fp32/bf16 states.");

  m.def(
      "adamw_int8_",
      [](uintptr_t p, uintptr_t g, uintptr_t exp_avg, uintptr_t exp_avg_sq, uintptr_t exp_avg_scale,
         uintptr_t exp_avg_sq_scale, int64_t n, double lr, double beta1, double beta2, double eps, double weight_decay,
         double step, bool maximize, double grad_mul, int threads) {
        if (n < 0) throw std::invalid_argument("negative numel");
        const optim::AdamWArgs a = make_args(lr, beta1, beta2, eps, weight_decay, step, maximize, false, grad_mul);
        const int64_t blocks = (n + optim::kQBlock - 1) / optim::kQBlock;
        optim::Int8Bufs b{ptr<float>(p, n, "param"), ptr<const float>(g, n, "grad"), ptr<int8_t>(exp_avg, n, "exp_avg"),
                          ptr<uint8_t>(exp_avg_sq, n, "exp_avg_sq"), ptr<float>(exp_avg_scale, blocks, "exp_avg_scale"),
                          ptr<float>(exp_avg_sq_scale, blocks, "exp_avg_sq_scale")};
        py::gil_scoped_release nogil;
        optim::adamw_int8(b, n, a, threads);
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("exp_avg_scale"),
      py::arg("exp_avg_sq_scale"), py::arg("numel"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("step"), py::arg("maximize"), py::arg("grad_mul"), py::arg("threads"),
      "One fused AdamW step over flat fp32 params with blockwise 8-bit states (block 256; csrc/optim/optim_int8.h).");

  m.def(
      "sgd_f32_",
      [](uintptr_t p, uintptr_t g, uintptr_t buf, int64_t n, double lr, double momentum, double dampening,
         double weight_decay, bool nesterov, bool maximize, bool first, int threads) {
        if (n < 0) throw std::invalid_argument("negative numel");
        if (momentum != 0.0 && n > 0 && buf == 0) throw std::invalid_argument("momentum needs a buffer");
        optim::SgdArgs a{float(lr), float(momentum), float(1.0 - dampening), float(weight_decay), nesterov, maximize, first};
        float* pp = ptr<float>(p, n, "param");
        const float* gp = ptr<const float>(g, n, "grad");
        float* bp = momentum != 0.0 ? ptr<float>(buf, n, "momentum_buffer") : nullptr;
        py::gil_scoped_release nogil;
        optim::sgd_f32(pp, gp, bp, n, a, threads);
      },
      py::arg("param"), py::arg("grad"), py::arg("momentum_buffer"), py::arg("numel"), py::arg("lr"),
      py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"),
      py::arg("first"), py::arg("threads"), "One fused SGD step over flat fp32 buffers (torch.optim.SGD semantics).");

  m.def(
      "lion_f32_",
      [](uintptr_t p, uintptr_t g, uintptr_t exp_avg, int64_t n, double lr, double beta1, double beta2,
         double weight_decay, bool maximize, int threads) {
        if (n < 0) throw std::invalid_argument("negative numel");
        optim::LionArgs a{float(lr), float(1.0 - lr * weight_decay), float(beta1), float(1.0 - beta1), float(beta2),
                          float(1.0 - beta2), maximize};
        float* pp = ptr<float>(p, n, "param");
        const float* gp = ptr<const float>(g, n, "grad");
        float* mp = ptr<float>(exp_avg, n, "exp_avg");
        py::gil_scoped_release nogil;
        optim::lion_f32(pp, gp, mp, n, a, threads);
      },
      py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("numel"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("weight_decay"), py::arg("maximize"), py::arg("threads"),
      "One fused Lion step over flat fp32 buffers.");

  m.def(
      "touch4r3w_",
      [](uintptr_t p, uintptr_t g, uintptr_t m_, uintptr_t v, int64_t n, float c, int threads) {
        if (n < 0) throw std::invalid_argument("negative numel");
        float* pp = ptr<float>(p, n, "p");
        const float* gp = ptr<const float>(g, n, "g");
        float* mp = ptr<float>(m_, n, "m");
        float* vp = ptr<float>(v, n, "v");
        py::gil_scoped_release nogil;
        optim::touch4r3w(pp, gp, mp, vp, n, c, threads);
      },
      py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("numel"), py::arg("c"), py::arg("threads"),
      "Benchmark roofline: p, m, v += c * g (reads 4 arrays, writes 3), the bytes of one AdamW pass.");
  m.def("isa", [] { return std::string(optim::kernels().name); }, "ISA of the optimizer kernels in use.");
}

}  // namespace ft
