// AVX-512 kernels (F + BW + VL + DQ). This file alone is compiled with -mavx512*; it is only called
// after dispatch.cpp has checked the CPU, so the installed module still loads on any x86-64.
// Tails use masked loads/stores instead of a scalar loop, so odd sizes take the same code path.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "simd_avx512.h"

namespace ft::avx512 {
namespace {

using simd512::load;
using simd512::mask_for;
using simd512::store;

constexpr int W = 16;  // fp32 lanes per vector

template <DType D>
float sumsq_block(const void* p, int64_t i, int64_t end) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  for (; i + 2 * W <= end; i += 2 * W) {
    const __m512 x0 = load<D>(p, i, 0xffff), x1 = load<D>(p, i + W, 0xffff);
    a0 = _mm512_fmadd_ps(x0, x0, a0);
    a1 = _mm512_fmadd_ps(x1, x1, a1);
  }
  for (; i < end; i += W) {
    const __m512 x = load<D>(p, i, mask_for(end - i));
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
    const __m512 x = load<D>(p, i, mask_for(n - i));
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
    const __mmask16 m = mask_for(n - i);
    store<D>(p, i, m, _mm512_mul_ps(load<D>(p, i, m), vs));
  }
}

}  // namespace

FT_DEFINE_KERNEL_TABLE("avx512")

}  // namespace ft::avx512
