// AVX-512 optimizer kernels (F + BW + VL + DQ; called only after dispatch.cpp checked the CPU).
// 16 fp32 lanes; the tail runs the same vector code under a mask, so odd sizes take one path.
#include <immintrin.h>

#include "optim.h"

namespace ft::optim::avx512 {
namespace {

constexpr int W = 16;

inline __mmask16 mask_for(int64_t left) { return left >= W ? __mmask16(0xffff) : __mmask16((1u << left) - 1u); }

void adamw_f32(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a) {
  const __m512 decay = _mm512_set1_ps(a.decay), b2 = _mm512_set1_ps(a.beta2), omb2 = _mm512_set1_ps(a.one_minus_b2);
  const bool low_w = a.one_minus_b1 < 0.5f;
  const __m512 w = _mm512_set1_ps(low_w ? a.one_minus_b1 : a.one_minus_b1 - 1.0f);
  const __m512 bc2 = _mm512_set1_ps(a.bc2_sqrt), eps = _mm512_set1_ps(a.eps), nss = _mm512_set1_ps(a.neg_step_size);
  const __m512 sign = _mm512_set1_ps(a.maximize ? -0.0f : 0.0f);
  for (int64_t i = 0; i < n; i += W) {
    const __mmask16 k = mask_for(n - i);
    __m512 vp = _mm512_maskz_loadu_ps(k, p + i);
    const __m512 vg = _mm512_xor_ps(_mm512_maskz_loadu_ps(k, g + i), sign);  // maximize: -g
    __m512 vm = _mm512_maskz_loadu_ps(k, m + i);
    __m512 vv = _mm512_maskz_loadu_ps(k, v + i);
    vp = _mm512_mul_ps(vp, decay);
    const __m512 d = _mm512_sub_ps(vg, vm);
    vm = _mm512_fmadd_ps(w, d, low_w ? vm : vg);
    vv = _mm512_add_ps(_mm512_mul_ps(vv, b2), _mm512_mul_ps(_mm512_mul_ps(omb2, vg), vg));
    __m512 vd = vv;
    if (a.amsgrad) {
      const __m512 mx = _mm512_maskz_loadu_ps(k, max_v + i);
      // max that propagates NaN from v, as torch.maximum does
      vd = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(vv, vv, _CMP_UNORD_Q), _mm512_max_ps(vv, mx), vv);
      _mm512_mask_storeu_ps(max_v + i, k, vd);
    }
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vd), bc2), eps);
    vp = _mm512_add_ps(vp, _mm512_div_ps(_mm512_mul_ps(nss, vm), denom));
    _mm512_mask_storeu_ps(p + i, k, vp);
    _mm512_mask_storeu_ps(m + i, k, vm);
    _mm512_mask_storeu_ps(v + i, k, vv);
  }
}

void touch4r3w(float* p, const float* g, float* m, float* v, int64_t n, float c) {
  const __m512 vc = _mm512_set1_ps(c);
  for (int64_t i = 0; i < n; i += W) {
    const __mmask16 k = mask_for(n - i);
    const __m512 t = _mm512_mul_ps(vc, _mm512_maskz_loadu_ps(k, g + i));
    _mm512_mask_storeu_ps(p + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, p + i), t));
    _mm512_mask_storeu_ps(m + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, m + i), t));
    _mm512_mask_storeu_ps(v + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, v + i), t));
  }
}

}  // namespace

const OptimKernels& table() {
  static const OptimKernels t{"avx512", adamw_f32, touch4r3w};
  return t;
}

}  // namespace ft::optim::avx512
