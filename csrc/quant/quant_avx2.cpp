// AVX2 quantized linear kernels (16 ymm registers, so smaller tiles than AVX-512). int8 x int8 widens
// both operands to int16 and uses vpmaddwd, which is exact (vpmaddubsw would saturate int16 pairs).
#include <immintrin.h>

#include "quant.h"

namespace ft::quant::avx2 {
namespace {

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load_i8_epi16(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <int MR, int NR>
inline void dyn_tile(const int8_t* x, const float* sx, const int8_t* w, const float* sw, const float* bias, float* y,
                     int64_t N, int64_t Kp, int64_t m0, int64_t n0) {
  __m256i acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  for (int64_t k = 0; k < Kp; k += 16) {
    __m256i wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = load_i8_epi16(w + (n0 + j) * Kp + k);
    for (int i = 0; i < MR; ++i) {
      const __m256i xv = load_i8_epi16(x + (m0 + i) * Kp + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(xv, wv[j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t n = n0 + j;
      y[(m0 + i) * N + n] = float(hsum_epi32(acc[i][j])) * (sx[m0 + i] * sw[n]) + (bias ? bias[n] : 0.0f);
    }
}

void int8_dyn(const void* xq, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
              const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  (void)wsum;
  const int8_t* x = static_cast<const int8_t*>(xq);
  for_tiles<2, 4>(M, n0, n1, [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    dyn_tile<decltype(mr)::value, decltype(nr)::value>(x, sx, w, sw, bias, y, N, Kp, m0, nn);
  });
}

inline __m256 load_i8_ps(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

template <int MR, int NR>
inline void w8_tile(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t N,
                    int64_t Kp, int64_t m0, int64_t n0) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < Kp; k += 8) {
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = load_i8_ps(w + (n0 + j) * Kp + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + (m0 + i) * Kp + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t n = n0 + j;
      y[(m0 + i) * N + n] = hsum_ps(acc[i][j]) * sw[n] + (bias ? bias[n] : 0.0f);
    }
}

void w8(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t M, int64_t N,
        int64_t Kp, int64_t n0, int64_t n1) {
  for_tiles<2, 4>(M, n0, n1, [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    w8_tile<decltype(mr)::value, decltype(nr)::value>(x, w, sw, bias, y, N, Kp, m0, nn);
  });
}

template <int MR, int NR>
inline void w4_tile(const float* x, const float* xg, const uint8_t* w, const void* s, bool s_bf16, int64_t group,
                    const float* bias, float* y, int64_t N, int64_t Kp, int64_t m0, int64_t n0) {
  const int64_t G = Kp / group, row_bytes = Kp / 2;
  const __m256i lo_mask = _mm256_set1_epi32(15);
  float total[MR][NR] = {};
  for (int64_t g = 0; g < G; ++g) {
    __m256 lo[MR][NR], hi[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) lo[i][j] = _mm256_setzero_ps(), hi[i][j] = _mm256_setzero_ps();
    // Each 32-value block is 16 bytes; bytes [8h, 8h + 8) hold values 8h.. (low) and 16 + 8h.. (high).
    for (int64_t b = g * group; b < (g + 1) * group; b += 32) {
      for (int h = 0; h < 2; ++h) {
        __m256 wl[NR], wh[NR];
        for (int j = 0; j < NR; ++j) {
          const __m256i u = _mm256_cvtepu8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + (n0 + j) * row_bytes + b / 2 + 8 * h)));
          wl[j] = _mm256_cvtepi32_ps(_mm256_and_si256(u, lo_mask));
          wh[j] = _mm256_cvtepi32_ps(_mm256_srli_epi32(u, 4));
        }
        for (int i = 0; i < MR; ++i) {
          const __m256 x0 = _mm256_loadu_ps(x + (m0 + i) * Kp + b + 8 * h);
          const __m256 x1 = _mm256_loadu_ps(x + (m0 + i) * Kp + b + 16 + 8 * h);
          for (int j = 0; j < NR; ++j) {
            lo[i][j] = _mm256_fmadd_ps(x0, wl[j], lo[i][j]);
            hi[i][j] = _mm256_fmadd_ps(x1, wh[j], hi[i][j]);
          }
        }
      }
    }
    for (int j = 0; j < NR; ++j) {
      const float sc = load_scale(s, (n0 + j) * G + g, s_bf16);
      for (int i = 0; i < MR; ++i)
        total[i][j] += sc * (hsum_ps(_mm256_add_ps(lo[i][j], hi[i][j])) - 8.0f * xg[(m0 + i) * G + g]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) y[(m0 + i) * N + n0 + j] = total[i][j] + (bias ? bias[n0 + j] : 0.0f);
}

void w4(const float* x, const uint16_t* xb, const float* xg, const uint8_t* w, const void* s, bool s_bf16, int64_t group,
        const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  (void)xb;  // the bf16 copy of x is for the AVX-512 BF16 kernel; x holds the same (bf16-rounded) values
  for_tiles<1, 2>(M, n0, n1, [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    w4_tile<decltype(mr)::value, decltype(nr)::value>(x, xg, w, s, s_bf16, group, bias, y, N, Kp, m0, nn);
  });
}

}  // namespace

const Table& table() {
  static const Table t{"avx2", false, int8_dyn, w8, w4};
  return t;
}

}  // namespace ft::quant::avx2
