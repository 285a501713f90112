// AVX2 + FMA optimizer kernels (8 fp32 lanes); the tail (< 8 elements) runs the scalar element
// code, which uses the same operation order, so results match the vector lanes bit for bit.
#include <immintrin.h>

#include "optim.h"
#include "optim_elem.h"
#include "optim_int8.h"
#include "optim_linear.h"

namespace ft::optim::avx2 {
namespace {

constexpr int W = 8;

void adamw_f32(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a) {
  const __m256 decay = _mm256_set1_ps(a.decay), b2 = _mm256_set1_ps(a.beta2), omb2 = _mm256_set1_ps(a.one_minus_b2);
  const bool low_w = a.one_minus_b1 < 0.5f;
  const __m256 w = _mm256_set1_ps(low_w ? a.one_minus_b1 : a.one_minus_b1 - 1.0f);
  const __m256 bc2 = _mm256_set1_ps(a.bc2_sqrt), eps = _mm256_set1_ps(a.eps), nss = _mm256_set1_ps(a.neg_step_size);
  const __m256 sign = _mm256_set1_ps(a.maximize ? -0.0f : 0.0f), gm = _mm256_set1_ps(a.grad_mul);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    __m256 vp = _mm256_loadu_ps(p + i);
    const __m256 vg = _mm256_xor_ps(_mm256_mul_ps(_mm256_loadu_ps(g + i), gm), sign);
    __m256 vm = _mm256_loadu_ps(m + i);
    __m256 vv = _mm256_loadu_ps(v + i);
    vp = _mm256_mul_ps(vp, decay);
    const __m256 d = _mm256_sub_ps(vg, vm);
    vm = _mm256_fmadd_ps(w, d, low_w ? vm : vg);
    vv = _mm256_add_ps(_mm256_mul_ps(vv, b2), _mm256_mul_ps(_mm256_mul_ps(omb2, vg), vg));
    __m256 vd = vv;
    if (a.amsgrad) {
      const __m256 mx = _mm256_loadu_ps(max_v + i);
      vd = _mm256_blendv_ps(_mm256_max_ps(vv, mx), vv, _mm256_cmp_ps(vv, vv, _CMP_UNORD_Q));
      _mm256_storeu_ps(max_v + i, vd);
    }
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vd), bc2), eps);
    vp = _mm256_add_ps(vp, _mm256_div_ps(_mm256_mul_ps(nss, vm), denom));
    _mm256_storeu_ps(p + i, vp);
    _mm256_storeu_ps(m + i, vm);
    _mm256_storeu_ps(v + i, vv);
  }
  for (; i < n; ++i) adamw_elem(p[i], g[i], m[i], v[i], max_v ? max_v + i : nullptr, a);
}

// SGD and Lion on AVX2 run the element loops above (compiled with AVX2 + FMA).
// Mixed precision on AVX2 runs the element loop (compiled with AVX2 + F16C, so the compiler may
// vectorise parts of it); the hand-written SIMD mixed path is AVX-512 only.
void adamw_mixed(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  dispatch_mixed<ElemLoop>(b, off, n, a);
}

// 8-bit states on AVX2: the portable block kernel (optim_int8.h) compiled with AVX2 + FMA; the
// hand-written SIMD 8-bit path is AVX-512 only. Same operations, so the same codes bit for bit.
void adamw_int8(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a) { adamw_int8_span_scalar(b, off, n, a); }

void sgd_f32(float* p, const float* g, float* buf, int64_t n, const SgdArgs& a) {
  for (int64_t i = 0; i < n; ++i) sgd_elem(p[i], g[i], buf ? buf + i : nullptr, a);
}

void lion_f32(float* p, const float* g, float* m, int64_t n, const LionArgs& a) {
  for (int64_t i = 0; i < n; ++i) lion_elem(p[i], g[i], m[i], a);
}

void touch4r3w(float* p, const float* g, float* m, float* v, int64_t n, float c) {
  const __m256 vc = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const __m256 t = _mm256_mul_ps(vc, _mm256_loadu_ps(g + i));
    _mm256_storeu_ps(p + i, _mm256_add_ps(_mm256_loadu_ps(p + i), t));
    _mm256_storeu_ps(m + i, _mm256_add_ps(_mm256_loadu_ps(m + i), t));
    _mm256_storeu_ps(v + i, _mm256_add_ps(_mm256_loadu_ps(v + i), t));
  }
  for (; i < n; ++i) {
    const float t = c * g[i];
    p[i] += t;
    m[i] += t;
    v[i] += t;
  }
}

// dy^T x chunk (optim_linear.h): 4 independent 8-lane accumulators; the tail runs the portable
// element loop (std::fma is the same instruction here), so every element follows one fma chain.
void linear_grad(const float* x, const float* dy, int64_t B, int64_t N, int64_t K, int64_t off, int64_t len, float* g) {
  float d[kLinearMaxRows];
  for_row_segments(K, off, len, [&](int64_t r, int64_t c0, int64_t seg, int64_t j) {
    for (int64_t b = 0; b < B; ++b) d[b] = dy[b * N + r];
    const float* xr = x + c0;
    float* gr = g + j;
    int64_t c = 0;
    for (; c + 4 * W <= seg; c += 4 * W) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t b = 0; b < B; ++b) {
        const __m256 db = _mm256_set1_ps(d[b]);
        const float* xb = xr + b * K + c;
        a0 = _mm256_fmadd_ps(db, _mm256_loadu_ps(xb), a0);
        a1 = _mm256_fmadd_ps(db, _mm256_loadu_ps(xb + W), a1);
        a2 = _mm256_fmadd_ps(db, _mm256_loadu_ps(xb + 2 * W), a2);
        a3 = _mm256_fmadd_ps(db, _mm256_loadu_ps(xb + 3 * W), a3);
      }
      _mm256_storeu_ps(gr + c, a0);
      _mm256_storeu_ps(gr + c + W, a1);
      _mm256_storeu_ps(gr + c + 2 * W, a2);
      _mm256_storeu_ps(gr + c + 3 * W, a3);
    }
    for (; c < seg; ++c) {
      float acc = 0.0f;
      for (int64_t b = 0; b < B; ++b) acc = std::fma(d[b], xr[b * K + c], acc);
      gr[c] = acc;
    }
  });
}

}  // namespace

const OptimKernels& table() {
  static const OptimKernels t{"avx2", adamw_f32, adamw_mixed, sgd_f32, lion_f32, adamw_int8, touch4r3w, linear_grad};
  return t;
}

}  // namespace ft::optim::avx2
