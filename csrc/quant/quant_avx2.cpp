// AVX2 quantized linear kernels (16 ymm registers, so smaller tiles than AVX-512). int8 x int8 widens
// both operands to int16 and uses vpmaddwd, which is exact (vpmaddubsw would saturate int16 pairs).
#include <immintrin.h>

#include <cmath>

#include "../simd_avx2.h"
#include "quant.h"

namespace ft::quant::avx2 {
namespace {

// int8 weights are VNNI-blocked (quant.h): per block of 16 columns, each k4 step is 64 bytes, 4 bytes
// (4 consecutive k) per column. AVX2 has no vpdpbusd: 16 bytes (4 columns) widen to int16 and vpmaddwd
// against the 4 activations repeated 4 times gives, per column, two int32 pair sums.

constexpr int64_t kChunkK4 = 64;  // fp32 path: k4 steps per partial sum (sums of <= 256 terms, then added)

template <int MR>
inline void dyn_block(const int8_t* x, const float* sx, const int8_t* w, const float* sw, const float* bias, float* y,
                      int64_t N, int64_t Kp, int64_t m0, int64_t b) {
  const int64_t K4 = Kp / 4;
  const int8_t* wb = w + b * K4 * 64;
  __m256i acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_setzero_si256();
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    __m256i wv[4];
    for (int c = 0; c < 4; ++c)
      wv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + k4 * 64 + 16 * c)));
    for (int i = 0; i < MR; ++i) {
      int32_t four;
      __builtin_memcpy(&four, x + (m0 + i) * Kp + 4 * k4, 4);
      const __m256i xv = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(four)));
      for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_add_epi32(acc[i][c], _mm256_madd_epi16(xv, wv[c]));
    }
  }
  for (int i = 0; i < MR; ++i) {
    alignas(32) int32_t part[4][8];
    for (int c = 0; c < 4; ++c) _mm256_store_si256(reinterpret_cast<__m256i*>(part[c]), acc[i][c]);
    for (int j = 0; j < 16 && b * 16 + j < N; ++j) {
      const int64_t n = b * 16 + j;
      const int32_t dot = part[j / 4][2 * (j % 4)] + part[j / 4][2 * (j % 4) + 1];
      y[(m0 + i) * N + n] = float(dot) * (sx[m0 + i] * sw[n]) + (bias ? bias[n] : 0.0f);
    }
  }
}

void int8_dyn(const void* xq, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
              const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  (void)wsum;
  const int8_t* x = static_cast<const int8_t*>(xq);
  for (int64_t b = n0 / 16; b < (n1 + 15) / 16; ++b)
    for (int64_t m = 0; m < M; m += 2) {
      if (M - m >= 2) dyn_block<2>(x, sx, w, sw, bias, y, N, Kp, m, b);
      else dyn_block<1>(x, sx, w, sw, bias, y, N, Kp, m, b);
    }
}

// fp32 activations: 8 weight bytes (2 columns x 4 k) widen to fp32 and multiply the 4 activations repeated
// twice; lanes 0-3 then sum to one column, lanes 4-7 to the next.
void w8_row_block(const float* xr, const int8_t* w, const float* sw, const float* bias, float* yr, int64_t N,
                  int64_t Kp, int64_t b) {
  const int64_t K4 = Kp / 4;
  const int8_t* wb = w + b * K4 * 64;
  float tot[16] = {};
  for (int64_t c0 = 0; c0 < K4; c0 += kChunkK4) {
    const int64_t c1 = std::min(K4, c0 + kChunkK4);
    __m256 acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t k4 = c0; k4 < c1; ++k4) {
      const __m256 xv = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xr + 4 * k4));
      for (int c = 0; c < 8; ++c) {
        const __m256 wv = _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wb + k4 * 64 + 8 * c))));
        acc[c] = _mm256_fmadd_ps(xv, wv, acc[c]);
      }
    }
    for (int c = 0; c < 8; ++c) {
      alignas(32) float part[8];
      _mm256_store_ps(part, acc[c]);
      tot[2 * c] += (part[0] + part[1]) + (part[2] + part[3]);
      tot[2 * c + 1] += (part[4] + part[5]) + (part[6] + part[7]);
    }
  }
  for (int j = 0; j < 16 && b * 16 + j < N; ++j) {
    const int64_t n = b * 16 + j;
    yr[n] = tot[j] * sw[n] + (bias ? bias[n] : 0.0f);
  }
}

void w8(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t M, int64_t N,
        int64_t Kp, int64_t n0, int64_t n1) {
  for (int64_t b = n0 / 16; b < (n1 + 15) / 16; ++b)
    for (int64_t m = 0; m < M; ++m) w8_row_block(x + m * Kp, w, sw, bias, y + m * N, N, Kp, b);
}

// int4 weights x 16-bit activations: each 16-byte quarter of a 64-byte step (4 columns x 8 k) unpacks to
// two int16 vectors (low nibbles: k 0-3, high: k 4-7) minus 8, and vpmaddwd against the activations
// repeated 4 times gives exact int32 pair sums (|q u| <= 32639 * 8; group <= 4096 keeps them in int32).
void w4_row_block(const int16_t* xq, const uint8_t* w, const void* s, bool s_bf16, int64_t group, const float* bias,
                  float* yr, float sx, int64_t N, int64_t Kp, int64_t b) {
  const int64_t K8 = Kp / 8, G = Kp / group, P = group / 8;
  const uint8_t* wb = w + b * K8 * 64;
  const __m128i nib = _mm_set1_epi8(15);
  const __m256i eight = _mm256_set1_epi16(8);
  float tot[16] = {};
  for (int64_t g = 0; g < G; ++g) {
    __m256i acc[4];
    for (int c = 0; c < 4; ++c) acc[c] = _mm256_setzero_si256();
    for (int64_t p = g * P; p < (g + 1) * P; ++p) {
      const __m256i x0 = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(xq + 8 * p));      // k 8p..8p+3
      const __m256i x1 = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(xq + 8 * p + 4));  // k 8p+4..8p+7
      for (int c = 0; c < 4; ++c) {
        const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + p * 64 + 16 * c));
        const __m256i lo = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(r, nib)), eight);
        const __m256i hi = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(r, 4), nib)), eight);
        acc[c] = _mm256_add_epi32(acc[c], _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1)));
      }
    }
    for (int c = 0; c < 4; ++c) {
      alignas(32) int32_t part[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(part), acc[c]);
      for (int q = 0; q < 4; ++q) {
        const int64_t n = b * 16 + 4 * c + q;
        if (n < N) tot[4 * c + q] += float(part[2 * q] + part[2 * q + 1]) * load_scale(s, int4_scale_index(n, g, G), s_bf16);
      }
    }
  }
  for (int j = 0; j < 16 && b * 16 + j < N; ++j) {
    const int64_t n = b * 16 + j;
    yr[n] = tot[j] * sx + (bias ? bias[n] : 0.0f);
  }
}

void w4(const Int4Act& x, const uint8_t* w, const void* s, bool s_bf16, int64_t group, const float* bias, float* y,
        int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  for (int64_t b = n0 / 16; b < (n1 + 15) / 16; ++b)
    for (int64_t m = 0; m < M; ++m) w4_row_block(x.q + m * Kp, w, s, s_bf16, group, bias, y + m * N, x.sx[m], N, Kp, b);
}

template <DType D>
void quant_rows_t(const void* x, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* xq, float* sx,
                  uint8_t offset) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const int64_t K8 = K / 8 * 8;
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t base = m * K;
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(simd256::load<D>(x, base + k), absmask));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, vmax);
    float amax = 0.0f;
    for (float l : lanes) amax = std::max(amax, l);
    for (int64_t k = K8; k < K; ++k) amax = std::max(amax, std::fabs(load_f32(x, base + k, D)));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    sx[m] = amax / 127.0f;
    uint8_t* q = xq + m * Kp;
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m128i off = _mm_set1_epi8(char(offset));
    for (int64_t k = 0; k < K8; k += 8) {
      // Clamping before the round is the same as after: the bounds are integers. cvtps2dq rounds half to even.
      const __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(simd256::load<D>(x, base + k), vinv)));
      const __m256i i32 = _mm256_cvtps_epi32(v);
      const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_add_epi8(_mm_packs_epi16(w16, w16), off));
    }
    for (int64_t k = K8; k < K; ++k) {
      float v = std::nearbyint(load_f32(x, base + k, D) * inv);
      v = std::min(127.0f, std::max(-127.0f, v));
      q[k] = uint8_t(int8_t(v)) + offset;
    }
    for (int64_t k = K; k < Kp; ++k) q[k] = offset;
  }
}

void quant_rows(const void* x, bool x_bf16, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* xq, float* sx,
                uint8_t offset) {
  if (x_bf16) quant_rows_t<DType::bf16>(x, m0, m1, K, Kp, xq, sx, offset);
  else quant_rows_t<DType::f32>(x, m0, m1, K, Kp, xq, sx, offset);
}

}  // namespace

const Table& table() {
  static const Table t{"avx2", false, int8_dyn, w8, w4, quant_rows, prep4_portable};
  return t;
}

}  // namespace ft::quant::avx2
