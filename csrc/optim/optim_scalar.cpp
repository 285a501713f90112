// Portable optimizer kernels: the reference path for every ISA and the one non-x86 builds use.
#include "optim.h"
#include "optim_elem.h"
#include "optim_int8.h"
#include "optim_linear.h"

namespace ft::optim::scalar {
namespace {

void adamw_f32(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a) {
  for (int64_t i = 0; i < n; ++i) adamw_elem(p[i], g[i], m[i], v[i], max_v ? max_v + i : nullptr, a);
}

void adamw_mixed(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  dispatch_mixed<ElemLoop>(b, off, n, a);
}

void adamw_int8(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a) { adamw_int8_span_scalar(b, off, n, a); }

void sgd_f32(float* p, const float* g, float* buf, int64_t n, const SgdArgs& a) {
  for (int64_t i = 0; i < n; ++i) sgd_elem(p[i], g[i], buf ? buf + i : nullptr, a);
}

void lion_f32(float* p, const float* g, float* m, int64_t n, const LionArgs& a) {
  for (int64_t i = 0; i < n; ++i) lion_elem(p[i], g[i], m[i], a);
}

void touch4r3w(float* p, const float* g, float* m, float* v, int64_t n, float c) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = c * g[i];
    p[i] += t;
    m[i] += t;
    v[i] += t;
  }
}

}  // namespace

const OptimKernels& table() {
  static const OptimKernels t{"scalar", adamw_f32, adamw_mixed, sgd_f32, lion_f32, adamw_int8, touch4r3w, linear_grad_portable};
  return t;
}

}  // namespace ft::optim::scalar
