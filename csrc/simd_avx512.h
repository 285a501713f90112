// AVX-512 (F/BW/VL) loads and stores of fp32 / fp16 / bf16 data as fp32 vectors, shared by every
// *_avx512*.cpp file. Include it only from files that CMake builds with the AVX-512 flags.
#pragma once
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__)
#error "simd_avx512.h needs -mavx512f -mavx512bw -mavx512vl (name the file *_avx512.cpp)"
#endif
#include <immintrin.h>

#include "common.h"

namespace ft::simd512 {
// Internal linkage (anonymous namespace): this header is compiled into translation units built with
// different ISA flags. Shared `inline` definitions would be merged by the linker into one copy, so the
// scalar path could end up running an AVX-512-compiled body (SIGILL on CPUs without it).
namespace {

// The first `left` lanes (all 16 when left >= 16).
inline __mmask16 mask_for(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u); }

// Loads the lanes of mask k as fp32 (masked-off lanes read as 0 and touch no memory).
template <DType D>
inline __m512 load(const void* p, int64_t i, __mmask16 k) {
  if constexpr (D == DType::f32) {
    return _mm512_maskz_loadu_ps(k, static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(p) + i);
    if constexpr (D == DType::f16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// fp32 -> bf16 bits in 32-bit lanes: round-to-nearest-even, NaNs quieted (the rule of common.h's
// f32_to_bf16). Integer arithmetic, so only AVX-512 F is needed (no VCVTNEPS2BF16).
inline __m512i bf16_rne_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

inline __m256i to_bf16(__m512 v) { return _mm512_cvtepi32_epi16(bf16_rne_bits(v)); }

// Stores the lanes of mask k, rounding to D (round-to-nearest-even).
template <DType D>
inline void store(void* p, int64_t i, __mmask16 k, __m512 v) {
  if constexpr (D == DType::f32) {
    _mm512_mask_storeu_ps(static_cast<float*>(p) + i, k, v);
  } else {
    __m256i h;
    if constexpr (D == DType::f16) h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else h = to_bf16(v);
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, k, h);
  }
}

}  // namespace
}  // namespace ft::simd512
