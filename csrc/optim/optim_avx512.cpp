// AVX-512 optimizer kernels (F + BW + VL + DQ; called only after dispatch.cpp checked the CPU).
// 16 fp32 lanes; the tail runs the same vector code under a mask, so odd sizes take one path.
#include <immintrin.h>

#include "../simd_avx512.h"
#include "optim.h"
#include "optim_elem.h"
#include "optim_int8.h"
#include "optim_linear.h"

namespace ft::optim::avx512 {
namespace {

constexpr int W = 16;

using simd512::bf16_rne_bits;
using simd512::load;
using simd512::mask_for;
using simd512::store;

// 1 / (sqrt(v) / bc2_sqrt + eps) without a division. Zen 4 has one divide/sqrt unit and at ~45 GB/s
// per core the exact form (one sqrt + two divides per element, as torch writes it) kept it busy
// longer than the memory took: the step ran at ~87% of the touch kernel's speed. Here: one sqrt, a
// multiply by the precomputed 1 / bc2_sqrt, and the reciprocal from rcp14 refined by one Newton step
// (r' = r * (2 - d * r), relative error ~1e-7). The update term differs from torch's by an ulp or two;
// it is ~lr relative to the param, so the param itself still matches to the last ulp or so.
inline __m512 recip_denom(__m512 v, __m512 ibc2, __m512 eps) {
  const __m512 d = _mm512_fmadd_ps(_mm512_sqrt_ps(v), ibc2, eps);
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

void adamw_f32(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a) {
  const __m512 decay = _mm512_set1_ps(a.decay), b2 = _mm512_set1_ps(a.beta2), omb2 = _mm512_set1_ps(a.one_minus_b2);
  const bool low_w = a.one_minus_b1 < 0.5f;
  const __m512 w = _mm512_set1_ps(low_w ? a.one_minus_b1 : a.one_minus_b1 - 1.0f);
  const __m512 ibc2 = _mm512_set1_ps(1.0f / a.bc2_sqrt), eps = _mm512_set1_ps(a.eps), nss = _mm512_set1_ps(a.neg_step_size);
  const __m512 sign = _mm512_set1_ps(a.maximize ? -0.0f : 0.0f), gm = _mm512_set1_ps(a.grad_mul);
  for (int64_t i = 0; i < n; i += W) {
    const __mmask16 k = mask_for(n - i);
    __m512 vp = _mm512_maskz_loadu_ps(k, p + i);
    const __m512 vg = _mm512_xor_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + i), gm), sign);  // unscale; maximize: -g
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
    vp = _mm512_add_ps(vp, _mm512_mul_ps(_mm512_mul_ps(nss, vm), recip_denom(vd, ibc2, eps)));
    _mm512_mask_storeu_ps(p + i, k, vp);
    _mm512_mask_storeu_ps(m + i, k, vm);
    _mm512_mask_storeu_ps(v + i, k, vv);
  }
}

void sgd_f32(float* p, const float* g, float* buf, int64_t n, const SgdArgs& a) {
  const __m512 wd = _mm512_set1_ps(a.weight_decay), mom = _mm512_set1_ps(a.momentum);
  const __m512 omd = _mm512_set1_ps(a.one_minus_dampening), nlr = _mm512_set1_ps(-a.lr);
  const __m512 sign = _mm512_set1_ps(a.maximize ? -0.0f : 0.0f);
  const bool decay = a.weight_decay != 0.0f;
  for (int64_t i = 0; i < n; i += W) {
    const __mmask16 k = mask_for(n - i);
    __m512 vp = _mm512_maskz_loadu_ps(k, p + i);
    __m512 vg = _mm512_xor_ps(_mm512_maskz_loadu_ps(k, g + i), sign);
    if (decay) vg = _mm512_fmadd_ps(vp, wd, vg);
    if (buf) {
      __m512 b = a.first ? vg : _mm512_fmadd_ps(vg, omd, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, buf + i), mom));
      _mm512_mask_storeu_ps(buf + i, k, b);
      vg = a.nesterov ? _mm512_fmadd_ps(b, mom, vg) : b;
    }
    _mm512_mask_storeu_ps(p + i, k, _mm512_fmadd_ps(vg, nlr, vp));
  }
}

void lion_f32(float* p, const float* g, float* m, int64_t n, const LionArgs& a) {
  const __m512 decay = _mm512_set1_ps(a.decay), b1 = _mm512_set1_ps(a.beta1), omb1 = _mm512_set1_ps(a.one_minus_b1);
  const __m512 b2 = _mm512_set1_ps(a.beta2), omb2 = _mm512_set1_ps(a.one_minus_b2), nlr = _mm512_set1_ps(-a.lr);
  const __m512 sign = _mm512_set1_ps(a.maximize ? -0.0f : 0.0f), one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += W) {
    const __mmask16 k = mask_for(n - i);
    __m512 vp = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i), decay);
    const __m512 vg = _mm512_xor_ps(_mm512_maskz_loadu_ps(k, g + i), sign);
    const __m512 vm = _mm512_maskz_loadu_ps(k, m + i);
    const __m512 c = _mm512_fmadd_ps(vg, omb1, _mm512_mul_ps(vm, b1));
    // sign(c) as torch computes it on CPU: (0 < c) - (c < 0), so NaN gives 0
    __m512 s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, zero, _CMP_GT_OQ), zero, one);
    s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, zero, _CMP_LT_OQ), s, _mm512_sub_ps(zero, one));
    _mm512_mask_storeu_ps(p + i, k, _mm512_fmadd_ps(s, nlr, vp));
    _mm512_mask_storeu_ps(m + i, k, _mm512_fmadd_ps(vg, omb2, _mm512_mul_ps(vm, b2)));
  }
}

// --- mixed precision -------------------------------------------------------------------------

inline __m512i bf16_sr_bits(__m512 v, int64_t i, uint32_t seed) {
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(int32_t(uint32_t(i))),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i x = _mm512_add_epi32(_mm512_mullo_epi32(idx, _mm512_set1_epi32(int32_t(0x9E3779B9u))),
                               _mm512_set1_epi32(int32_t(seed)));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(int32_t(0x846ca68bu)));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  const __m512i u = _mm512_castps_si512(v);
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  const __mmask16 finite = _mm512_cmpneq_epi32_mask(_mm512_and_si512(u, expo), expo);
  const __m512i noisy = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_and_si512(x, _mm512_set1_epi32(0xffff))), 16);
  return _mm512_mask_mov_epi32(bf16_rne_bits(v), finite, noisy);
}

template <DType P, DType S, bool MASTER>
struct MixedLoop {
  static void run(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
    const __m512 decay = _mm512_set1_ps(a.decay), b2 = _mm512_set1_ps(a.beta2), omb2 = _mm512_set1_ps(a.one_minus_b2);
    const bool low_w = a.one_minus_b1 < 0.5f;
    const __m512 w = _mm512_set1_ps(low_w ? a.one_minus_b1 : a.one_minus_b1 - 1.0f);
    const __m512 ibc2 = _mm512_set1_ps(1.0f / a.bc2_sqrt), eps = _mm512_set1_ps(a.eps), nss = _mm512_set1_ps(a.neg_step_size);
    const __m512 sign = _mm512_set1_ps(a.maximize ? -0.0f : 0.0f), gm = _mm512_set1_ps(a.grad_mul);
    const int64_t end = off + n;
    for (int64_t i = off; i < end; i += W) {
      const __mmask16 k = mask_for(end - i);
      __m512 vp = MASTER ? _mm512_maskz_loadu_ps(k, b.master + i) : load<P>(b.p, i, k);
      const __m512 vg = _mm512_xor_ps(_mm512_mul_ps(load<P>(b.g, i, k), gm), sign);
      __m512 vm = load<S>(b.m, i, k);
      __m512 vv = load<S>(b.v, i, k);
      vp = _mm512_mul_ps(vp, decay);
      vm = _mm512_fmadd_ps(w, _mm512_sub_ps(vg, vm), low_w ? vm : vg);
      vv = _mm512_add_ps(_mm512_mul_ps(vv, b2), _mm512_mul_ps(_mm512_mul_ps(omb2, vg), vg));
      __m512 vd = vv;
      if (a.amsgrad) {
        const __m512 mx = load<S>(b.max_v, i, k);
        vd = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(vv, vv, _CMP_UNORD_Q), _mm512_max_ps(vv, mx), vv);
        store<S>(b.max_v, i, k, vd);
      }
      vp = _mm512_add_ps(vp, _mm512_mul_ps(_mm512_mul_ps(nss, vm), recip_denom(vd, ibc2, eps)));
      if constexpr (MASTER) _mm512_mask_storeu_ps(b.master + i, k, vp);
      if constexpr (P == DType::bf16) {
        if (a.stochastic) {
          _mm256_mask_storeu_epi16(static_cast<uint16_t*>(b.p) + i, k, _mm512_cvtepi32_epi16(bf16_sr_bits(vp, i, a.seed)));
        } else {
          store<P>(b.p, i, k, vp);
        }
      } else {
        store<P>(b.p, i, k, vp);
      }
      store<S>(b.m, i, k, vm);
      store<S>(b.v, i, k, vv);
    }
  }
};

void adamw_mixed(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  dispatch_mixed<MixedLoop>(b, off, n, a);
}

// --- blockwise 8-bit states (code maps and the exact rounding rule: optim_int8.h) ---------------
// No FMA contraction here (see optim_int8.h): the codes must match the scalar path bit for bit.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

// round(sqrt(x)) with ties up, exactly, as an fp32 integer, for x in [0, qmax^2 (1 + 2^-21)] (so no
// clamp: the next threshold, (qmax + 1/2)^2, is far above). No VSQRTPS: the update already has one per
// vector. x * rsqrt14(x) is within 255 * 2^-14 < 0.016 of sqrt(x), so floor(it + 0.48) is q or q - 1,
// never more; one comparison with the exact threshold (q + 1/2)^2 = q * (q + 1) + 1/4 (exact in fp32)
// then picks q. Staying in fp32 saves the int <-> float round trip.
inline __m512 sqrt_code(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 r = _mm512_rsqrt14_ps(_mm512_max_ps(x, _mm512_set1_ps(1e-30f)));  // x = 0 -> 0 * 1e15
  const __m512 q = _mm512_roundscale_ps(_mm512_fmadd_ps(x, r, _mm512_set1_ps(0.48f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 hi = _mm512_fmadd_ps(q, _mm512_add_ps(q, one), _mm512_set1_ps(0.25f));
  return _mm512_mask_add_ps(q, _mm512_cmp_ps_mask(x, hi, _CMP_GE_OQ), q, one);
}

// max over the lanes of a.
inline float hmax(__m512 a) { return _mm512_reduce_max_ps(a); }

// max(|acc|, |x|) in one op (VRANGEPS imm 0b1011: larger magnitude, sign cleared). It does not carry
// NaNs through on every CPU, so the caller tracks them with a compare.
inline __m512 absmax(__m512 acc, __mmask16 k, __m512 x) { return _mm512_mask_range_ps(acc, k, acc, x, 0x0B); }

// SCALED_G: the gradient is multiplied by grad_mul and/or negated (maximize); false skips both ops,
// the common case (the pass is compute-bound on Zen 4: every vector op counts).
template <bool SCALED_G>
void adamw_int8_t(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  const __m512 decay = _mm512_set1_ps(a.decay), b2 = _mm512_set1_ps(a.beta2), omb2 = _mm512_set1_ps(a.one_minus_b2);
  const bool low_w = a.one_minus_b1 < 0.5f;
  const __m512 w = _mm512_set1_ps(low_w ? a.one_minus_b1 : a.one_minus_b1 - 1.0f);
  const __m512 ibc2 = _mm512_set1_ps(1.0f / a.bc2_sqrt), eps = _mm512_set1_ps(a.eps), nss = _mm512_set1_ps(a.neg_step_size);
  const __m512 sign = _mm512_set1_ps(a.maximize ? -0.0f : 0.0f), gm = _mm512_set1_ps(a.grad_mul);
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  const __m512i sbit = _mm512_set1_epi32(int32_t(0x80000000u));
  alignas(64) float mb[kQBlock], sb[kQBlock];  // the block's new m and sqrt(v), in L1 until requantized
  for (int64_t b0 = 0; b0 < n; b0 += kQBlock) {
    const int64_t o = off + b0, len = std::min(kQBlock, n - b0), blk = o / kQBlock;
    float* p = b.p + o;
    const float* g = b.g + o;
    const __m512 dm = _mm512_set1_ps(b.m_scale[blk] / kQm2), dv = _mm512_set1_ps(b.v_scale[blk] / kQv2);
    __m512 am = zero, as = zero;
    __mmask16 nan = 0;
    for (int64_t i = 0; i < len; i += W) {
      const __mmask16 k = mask_for(len - i);
      const __m512 qm = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, b.m + o + i)));
      const __m512 qv = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, b.v + o + i)));
      __m512 vm = _mm512_mul_ps(_mm512_mul_ps(qm, _mm512_abs_ps(qm)), dm);
      const __m512 s = _mm512_mul_ps(_mm512_mul_ps(qv, qv), dv);
      __m512 vv = _mm512_mul_ps(s, s);
      const __m512 vp = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i), decay);
      __m512 vg = _mm512_maskz_loadu_ps(k, g + i);
      if constexpr (SCALED_G) vg = _mm512_xor_ps(_mm512_mul_ps(vg, gm), sign);
      vm = _mm512_fmadd_ps(w, _mm512_sub_ps(vg, vm), low_w ? vm : vg);
      vv = _mm512_add_ps(_mm512_mul_ps(vv, b2), _mm512_mul_ps(_mm512_mul_ps(omb2, vg), vg));
      const __m512 sn = _mm512_sqrt_ps(vv);
      // p * decay + (-step_size * m) / (sqrt(v) / bc2 + eps). A true division here, unlike adamw_f32's
      // refined reciprocal: this pass is bound by the FP multiply pipes, and the divider has room.
      const __m512 d = _mm512_fmadd_ps(sn, ibc2, eps);
      _mm512_mask_storeu_ps(p + i, k, _mm512_add_ps(vp, _mm512_div_ps(_mm512_mul_ps(nss, vm), d)));
      _mm512_store_ps(mb + i, vm);
      _mm512_store_ps(sb + i, sn);
      am = absmax(am, k, vm);
      as = absmax(as, k, sn);
      const __m512 t = _mm512_add_ps(vm, sn);  // NaN iff either is (one compare for both states)
      nan |= _mm512_mask_cmp_ps_mask(k, t, t, _CMP_UNORD_Q);
    }
    const float amax = block_scale(hmax(am), nan != 0), smax = block_scale(hmax(as), nan != 0);
    b.m_scale[blk] = amax;
    b.v_scale[blk] = smax;
    const bool mok = std::isfinite(amax) && amax > 0.0f, vok = std::isfinite(smax) && smax > 0.0f;
    const __m512 cm = _mm512_set1_ps(mok ? kQm2 / amax : 0.0f), cv = _mm512_set1_ps(vok ? kQv2 / smax : 0.0f);
    for (int64_t i = 0; i < len; i += W) {
      const __mmask16 k = mask_for(len - i);
      const __m512 vm = _mm512_load_ps(mb + i), sn = _mm512_load_ps(sb + i);
      __m512i qm = _mm512_setzero_si512(), qv = _mm512_setzero_si512();
      if (mok) {  // code with m's sign bit (a -0 code converts to 0)
        const __m512 q = sqrt_code(_mm512_mul_ps(_mm512_abs_ps(vm), cm));
        qm = _mm512_cvtps_epi32(_mm512_castsi512_ps(
            _mm512_ternarylogic_epi32(_mm512_castps_si512(q), _mm512_castps_si512(vm), sbit, 0xF8)));  // q | (m & sign)
      }
      if (vok) {  // a nonzero sqrt(v) never gets code 0
        const __m512 q = sqrt_code(_mm512_mul_ps(sn, cv));
        qv = _mm512_cvtps_epi32(_mm512_mask_max_ps(q, _mm512_cmp_ps_mask(sn, zero, _CMP_GT_OQ), q, one));
      }
      _mm_mask_storeu_epi8(b.m + o + i, k, _mm512_cvtsepi32_epi8(qm));
      _mm_mask_storeu_epi8(b.v + o + i, k, _mm512_cvtusepi32_epi8(qv));
    }
  }
}

void adamw_int8(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  if (a.grad_mul == 1.0f && !a.maximize) adamw_int8_t<false>(b, off, n, a);
  else adamw_int8_t<true>(b, off, n, a);
}
#pragma GCC pop_options

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

// dy^T x chunk (optim_linear.h): 4 independent 16-lane accumulators per step so the FMA latency is
// hidden; each lane runs the same fma chain over b as the portable loop.
void linear_grad(const float* x, const float* dy, int64_t B, int64_t N, int64_t K, int64_t off, int64_t len, float* g) {
  float d[kLinearMaxRows];
  for_row_segments(K, off, len, [&](int64_t r, int64_t c0, int64_t seg, int64_t j) {
    for (int64_t b = 0; b < B; ++b) d[b] = dy[b * N + r];
    const float* xr = x + c0;
    float* gr = g + j;
    int64_t c = 0;
    for (; c + 4 * W <= seg; c += 4 * W) {
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t b = 0; b < B; ++b) {
        const __m512 db = _mm512_set1_ps(d[b]);
        const float* xb = xr + b * K + c;
        a0 = _mm512_fmadd_ps(db, _mm512_loadu_ps(xb), a0);
        a1 = _mm512_fmadd_ps(db, _mm512_loadu_ps(xb + W), a1);
        a2 = _mm512_fmadd_ps(db, _mm512_loadu_ps(xb + 2 * W), a2);
        a3 = _mm512_fmadd_ps(db, _mm512_loadu_ps(xb + 3 * W), a3);
      }
      _mm512_storeu_ps(gr + c, a0);
      _mm512_storeu_ps(gr + c + W, a1);
      _mm512_storeu_ps(gr + c + 2 * W, a2);
      _mm512_storeu_ps(gr + c + 3 * W, a3);
    }
    for (; c < seg; c += W) {
      const __mmask16 k = mask_for(seg - c);
      __m512 a = _mm512_setzero_ps();
      for (int64_t b = 0; b < B; ++b) a = _mm512_fmadd_ps(_mm512_set1_ps(d[b]), _mm512_maskz_loadu_ps(k, xr + b * K + c), a);
      _mm512_mask_storeu_ps(gr + c, k, a);
    }
  });
}

}  // namespace

const OptimKernels& table() {
  static const OptimKernels t{"avx512", adamw_f32, adamw_mixed, sgd_f32, lion_f32, adamw_int8, touch4r3w, linear_grad};
  return t;
}

}  // namespace ft::optim::avx512
