// AVX2 + FMA + F16C kernels. Compiled with those flags only in this file and called only after
// dispatch.cpp has checked the CPU. Tails (< 8 elements) go through the scalar helpers of common.h,
// which round exactly as the vector code does.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "simd_avx2.h"

namespace ft::avx2 {
namespace {

constexpr int W = 8;  // fp32 lanes per vector

using simd256::load;
using simd256::store;

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

inline float hmax(__m256 v) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Sum of squares of elements [i, end): four accumulators hide the FMA latency.
template <DType D>
float sumsq_block(const void* p, int64_t i, int64_t end) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 4 * W <= end; i += 4 * W) {
    const __m256 x0 = load<D>(p, i), x1 = load<D>(p, i + W);
    const __m256 x2 = load<D>(p, i + 2 * W), x3 = load<D>(p, i + 3 * W);
    a0 = _mm256_fmadd_ps(x0, x0, a0);
    a1 = _mm256_fmadd_ps(x1, x1, a1);
    a2 = _mm256_fmadd_ps(x2, x2, a2);
    a3 = _mm256_fmadd_ps(x3, x3, a3);
  }
  for (; i + W <= end; i += W) {
    const __m256 x = load<D>(p, i);
    a0 = _mm256_fmadd_ps(x, x, a0);
  }
  float acc = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < end; ++i) {
    const float x = load_f32(p, i, D);
    acc += x * x;
  }
  return acc;
}

template <DType D>
float absmax_t(const void* p, int64_t n) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();  // max_ps drops NaNs: track them apart
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const __m256 x = load<D>(p, i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    m = _mm256_max_ps(m, _mm256_and_ps(x, absmask));
  }
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  float r = hmax(m);
  for (; i < n; ++i) {
    const float x = std::fabs(load_f32(p, i, D));
    any_nan |= std::isnan(x);
    r = x > r ? x : r;
  }
  return any_nan ? NAN : r;
}

template <DType D>
void scale_t(void* p, int64_t n, float s) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const __m256 x0 = load<D>(p, i), x1 = load<D>(p, i + W);
    store<D>(p, i, _mm256_mul_ps(x0, vs));
    store<D>(p, i + W, _mm256_mul_ps(x1, vs));
  }
  for (; i + W <= n; i += W) store<D>(p, i, _mm256_mul_ps(load<D>(p, i), vs));
  for (; i < n; ++i) store_f32(p, i, D, load_f32(p, i, D) * s);
}

}  // namespace

FT_DEFINE_KERNEL_TABLE("avx2")

}  // namespace ft::avx2
