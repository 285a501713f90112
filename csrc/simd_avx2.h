// AVX2 (+ F16C) loads and stores of fp32 / fp16 / bf16 data as fp32 vectors of 8 lanes, shared by
// every *_avx2.cpp file. Include it only from files that CMake builds with the AVX2 flags.
#pragma once
#if !defined(__AVX2__) || !defined(__F16C__)
#error "simd_avx2.h needs -mavx2 -mf16c (name the file *_avx2.cpp)"
#endif
#include <immintrin.h>

#include "common.h"

namespace ft::simd256 {
// Internal linkage (anonymous namespace): this header is compiled into translation units built with
// different ISA flags. Shared `inline` definitions would be merged by the linker into one copy, so the
// scalar path could end up running an AVX-512-compiled body (SIGILL on CPUs without it).
namespace {

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

// fp32 -> bf16 bits, round-to-nearest-even, NaNs quieted (the rule of common.h's f32_to_bf16).
inline __m128i to_bf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // Values fit in 16 bits, so the saturating pack is exact; packus works per 128-bit lane, so pack
  // the two halves against each other.
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
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

}  // namespace
}  // namespace ft::simd256
