// AVX2 + FMA + F16C kernels. Compiled with those flags only in this file and called only after
// dispatch.cpp has checked the CPU. Tails (< 8 elements) go through the scalar helpers of common.h,
// which round exactly as the vector code does.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common.h"

namespace ft::avx2 {
namespace {

constexpr int W = 8;  // fp32 lanes per vector

template <DType D>
inline __m256 load(const void* p, int64_t i) {
  if constexpr (D == DType::f32) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (D == DType::f16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// fp32 -> bf16 bits, round-to-nearest-even, NaNs quieted (same rule as common.h).
inline __m128i to_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // Values fit in 16 bits, so the saturating pack is exact; it packs per 128-bit lane, so
  // gather qwords 0 and 2 into the low half.
  const __m256i packed = _mm256_packus_epi32(r, r);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

template <DType D>
inline void store(void* p, int64_t i, __m256 v) {
  if constexpr (D == DType::f32) {
    _mm256_storeu_ps(static_cast<float*>(p) + i, v);
  } else {
    __m128i h;
    if constexpr (D == DType::f16) h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else h = to_bf16(v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i), h);
  }
}

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
