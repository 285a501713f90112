// AVX-512 kernels (F + BW + VL + DQ). This file alone is compiled with -mavx512*; it is only called
// after dispatch.cpp has checked the CPU, so the installed module still loads on any x86-64.
// Tails use masked loads/stores instead of a scalar loop, so odd sizes take the same code path.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common.h"

namespace ft::avx512 {
namespace {

constexpr int W = 16;  // fp32 lanes per vector

// Load 16 elements (or the first `k` lanes of mask m) as fp32.
template <DType D>
inline __m512 load(const void* p, int64_t i, __mmask16 m) {
  if constexpr (D == DType::f32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i);
    if constexpr (D == DType::f16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// fp32 -> bf16 bits with round-to-nearest-even, quieting NaNs (same rule as common.h).
inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

template <DType D>
inline void store(void* p, int64_t i, __mmask16 m, __m512 v) {
  if constexpr (D == DType::f32) {
    _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
  } else {
    __m256i h;
    if constexpr (D == DType::f16) h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else h = to_bf16(v);
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, m, h);
  }
}

inline __mmask16 tail_mask(int64_t k) { return __mmask16((1u << k) - 1u); }

// Sum of squares of elements [i, end). Two accumulators: on Zen 4 streaming 128 bytes per
// iteration measured ~10% faster than 256 (acc4) from DRAM, and two chains already hide the FMA
// latency behind the loads.
template <DType D>
float sumsq_block(const void* p, int64_t i, int64_t end) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  for (; i + 2 * W <= end; i += 2 * W) {
    const __m512 x0 = load<D>(p, i, 0xffff), x1 = load<D>(p, i + W, 0xffff);
    a0 = _mm512_fmadd_ps(x0, x0, a0);
    a1 = _mm512_fmadd_ps(x1, x1, a1);
  }
  for (; i < end; i += W) {
    const __m512 x = load<D>(p, i, end - i >= W ? __mmask16(0xffff) : tail_mask(end - i));
    a0 = _mm512_fmadd_ps(x, x, a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

template <DType D>
float absmax_t(const void* p, int64_t n) {
  __m512 m0 = _mm512_setzero_ps(), m1 = m0;
  __mmask16 nan = 0;  // max_ps drops NaNs, so they are tracked separately
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const __m512 x0 = load<D>(p, i, 0xffff), x1 = load<D>(p, i + W, 0xffff);
    nan |= _mm512_cmp_ps_mask(x0, x1, _CMP_UNORD_Q);  // lanes where x0 or x1 is NaN
    m0 = _mm512_max_ps(m0, _mm512_abs_ps(x0));
    m1 = _mm512_max_ps(m1, _mm512_abs_ps(x1));
  }
  for (; i < n; i += W) {
    const __m512 x = load<D>(p, i, n - i >= W ? __mmask16(0xffff) : tail_mask(n - i));
    nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    m0 = _mm512_max_ps(m0, _mm512_abs_ps(x));
  }
  return nan ? NAN : _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

template <DType D>
void scale_t(void* p, int64_t n, float s) {
  const __m512 vs = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const __m512 x0 = load<D>(p, i, 0xffff), x1 = load<D>(p, i + W, 0xffff);
    store<D>(p, i, 0xffff, _mm512_mul_ps(x0, vs));
    store<D>(p, i + W, 0xffff, _mm512_mul_ps(x1, vs));
  }
  for (; i < n; i += W) {
    const __mmask16 m = n - i >= W ? __mmask16(0xffff) : tail_mask(n - i);
    store<D>(p, i, m, _mm512_mul_ps(load<D>(p, i, m), vs));
  }
}

}  // namespace

FT_DEFINE_KERNEL_TABLE("avx512")

}  // namespace ft::avx512
