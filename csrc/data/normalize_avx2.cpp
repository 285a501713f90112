// AVX2 uint8 -> normalized float kernel: 8 lanes, scalar tail (only called after the CPU check).
#include <immintrin.h>

#include "../simd_avx2.h"
#include "data.h"

namespace ft::data::avx2 {
namespace {

using simd256::to_bf16;  // NaN quieting never triggers here: std > 0 is checked in Python

void u8_normalize(const uint8_t* src, int64_t n, const float* mean, const float* std, void* out, DType dt) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i));
    const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
    const __m256 v = _mm256_div_ps(_mm256_sub_ps(x, _mm256_loadu_ps(mean + i)), _mm256_loadu_ps(std + i));
    if (dt == DType::f32) _mm256_storeu_ps(static_cast<float*>(out) + i, v);
    else if (dt == DType::bf16) _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), to_bf16(v));
    else _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) store_f32(out, i, dt, (float(src[i]) - mean[i]) / std[i]);
}

const DataKernels kTable{"avx2", u8_normalize};

}  // namespace
const DataKernels& table() { return kTable; }
}  // namespace ft::data::avx2
