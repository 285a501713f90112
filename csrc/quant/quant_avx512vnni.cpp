// AVX-512 quantized linear kernels: int8 x int8 with VNNI (vpdpbusd), int8 / int4 weights with fp32
// activations via widening converts + FMA. Compiled with VNNI + BF16 flags (CMakeLists.txt); quant.cpp
// calls these only after __builtin_cpu_supports("avx512vnni").
//
// vpdpbusd multiplies unsigned bytes by signed bytes, so activations are stored as u = q + 128 and
// sum_k u w = sum_k q w + 128 * sum_k w: the driver passes the weight row sums to undo the excess
// (the usual trick, as in oneDNN / FBGEMM; written here from the identity).
#include <immintrin.h>

#include "quant.h"

namespace ft::quant::avx512vnni {
namespace {

// Horizontal sums of four accumulators at once (~13 instructions instead of 4 x 8): interleave pairs
// within 128-bit lanes, add, then fold the four lanes. At K = 1024 the per-output reductions would
// otherwise cost a third as much as the dot products.
inline void dot4(const __m512i a[4], int32_t out[4]) {
  const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
  const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
  // Each 128-bit lane now holds [a0, a1, a2, a3] partial sums.
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
  const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), q);
}

template <int MR, int NR>
inline void dyn_tile(const uint8_t* x, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
                     const float* bias, float* y, int64_t N, int64_t Kp, int64_t m0, int64_t n0) {
  __m512i acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < Kp; k += 64) {
    __m512i wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_loadu_si512(w + (n0 + j) * Kp + k);
    for (int i = 0; i < MR; ++i) {
      const __m512i xv = _mm512_loadu_si512(x + (m0 + i) * Kp + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    int32_t dot[NR];
    if constexpr (NR == 4) {
      dot4(acc[i], dot);
    } else {
      for (int j = 0; j < NR; ++j) dot[j] = _mm512_reduce_add_epi32(acc[i][j]);
    }
    for (int j = 0; j < NR; ++j) {
      const int64_t n = n0 + j;
      y[(m0 + i) * N + n] = float(dot[j] - 128 * wsum[n]) * (sx[m0 + i] * sw[n]) + (bias ? bias[n] : 0.0f);
    }
  }
}

void int8_dyn(const void* xq, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
              const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  const uint8_t* x = static_cast<const uint8_t*>(xq);
  // 4 x 4 tiles: 16 accumulators + 4 weight vectors + 1 activation vector of the 32 zmm registers.
  for_tiles<4, 4>(M, n0, n1, [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    dyn_tile<decltype(mr)::value, decltype(nr)::value>(x, sx, w, sw, wsum, bias, y, N, Kp, m0, nn);
  });
}

inline __m512 load_i8_ps(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

template <int MR, int NR>
inline void w8_tile(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t N,
                    int64_t Kp, int64_t m0, int64_t n0) {
  // Two accumulators per output for batch 1, so the FMA chains are long enough to hide latency.
  constexpr int U = MR == 1 ? 2 : 1;
  __m512 acc[U][MR][NR];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[u][i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < Kp; k += 16 * U) {
    for (int u = 0; u < U; ++u) {
      __m512 wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = load_i8_ps(w + (n0 + j) * Kp + k + 16 * u);
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_loadu_ps(x + (m0 + i) * Kp + k + 16 * u);
        for (int j = 0; j < NR; ++j) acc[u][i][j] = _mm512_fmadd_ps(xv, wv[j], acc[u][i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      __m512 a = acc[0][i][j];
      if constexpr (U == 2) a = _mm512_add_ps(a, acc[U - 1][i][j]);
      const int64_t n = n0 + j;
      y[(m0 + i) * N + n] = _mm512_reduce_add_ps(a) * sw[n] + (bias ? bias[n] : 0.0f);
    }
}

void w8(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t M, int64_t N,
        int64_t Kp, int64_t n0, int64_t n1) {
  for_tiles<4, 4>(M, n0, n1, [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    w8_tile<decltype(mr)::value, decltype(nr)::value>(x, w, sw, bias, y, N, Kp, m0, nn);
  });
}

template <int MR, int NR>
inline void w4_tile(const float* x, const float* xg, const uint8_t* w, const void* s, bool s_bf16, int64_t group,
                    const float* bias, float* y, int64_t N, int64_t Kp, int64_t m0, int64_t n0) {
  const int64_t G = Kp / group, row_bytes = Kp / 2;
  const __m512i lo_mask = _mm512_set1_epi32(15);
  __m512 facc[MR][NR];
  float corr[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) facc[i][j] = _mm512_setzero_ps(), corr[i][j] = 0.0f;
  for (int64_t g = 0; g < G; ++g) {
    // Separate accumulators for the low and high nibbles: two independent FMA chains per output.
    __m512 lo[MR][NR], hi[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) lo[i][j] = _mm512_setzero_ps(), hi[i][j] = _mm512_setzero_ps();
    for (int64_t b = g * group; b < (g + 1) * group; b += 32) {
      __m512 wl[NR], wh[NR];
      for (int j = 0; j < NR; ++j) {
        const __m512i u = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (n0 + j) * row_bytes + b / 2)));
        wl[j] = _mm512_cvtepi32_ps(_mm512_and_si512(u, lo_mask));
        wh[j] = _mm512_cvtepi32_ps(_mm512_srli_epi32(u, 4));
      }
      for (int i = 0; i < MR; ++i) {
        const __m512 x0 = _mm512_loadu_ps(x + (m0 + i) * Kp + b);
        const __m512 x1 = _mm512_loadu_ps(x + (m0 + i) * Kp + b + 16);
        for (int j = 0; j < NR; ++j) {
          lo[i][j] = _mm512_fmadd_ps(x0, wl[j], lo[i][j]);
          hi[i][j] = _mm512_fmadd_ps(x1, wh[j], hi[i][j]);
        }
      }
    }
    for (int j = 0; j < NR; ++j) {
      const float sc = load_scale(s, (n0 + j) * G + g, s_bf16);
      const __m512 sv = _mm512_set1_ps(sc);
      for (int i = 0; i < MR; ++i) {
        facc[i][j] = _mm512_fmadd_ps(sv, _mm512_add_ps(lo[i][j], hi[i][j]), facc[i][j]);
        corr[i][j] += sc * xg[(m0 + i) * G + g];
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t n = n0 + j;
      y[(m0 + i) * N + n] = _mm512_reduce_add_ps(facc[i][j]) - 8.0f * corr[i][j] + (bias ? bias[n] : 0.0f);
    }
}

void w4_f32(const float* x, const uint16_t* xb, const float* xg, const uint8_t* w, const void* s, bool s_bf16,
            int64_t group, const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  (void)xb;
  auto body = [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    w4_tile<decltype(mr)::value, decltype(nr)::value>(x, xg, w, s, s_bf16, group, bias, y, N, Kp, m0, nn);
  };
  // Batch 1 reads 4 weight rows per activation load; larger batches reuse each unpacked weight vector
  // across 4 rows of x. Both keep 3 * MR * NR accumulators plus temporaries within 32 registers.
  if (M == 1) for_tiles<1, 4>(M, n0, n1, body);
  else for_tiles<4, 2>(M, n0, n1, body);
}

// int4 through AVX-512 BF16: one vdpbf16ps does 32 multiply-adds (exact bf16 products, fp32 sums), and the
// nibbles become bf16 with a table lookup instead of two int->float converts, about 5 instructions per 32
// weights instead of 7 plus half the FMAs. The 16 bytes of a block are broadcast to both halves of a
// 32-word vector, the upper half shifted right by 4, and vpermw maps each word's low 5 bits through a
// 32-entry table whose entry i is bf16(i & 15): the low half thereby ignores the high nibble's bit 4.
alignas(64) const uint16_t kNibbleBf16[32] = {
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150,
    0x4160, 0x4170, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120, 0x4130,
    0x4140, 0x4150, 0x4160, 0x4170};

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

template <int MR, int NR>
inline void w4bf_tile(const uint16_t* xb, const float* xg, const uint8_t* w, const void* s, bool s_bf16,
                      int64_t group, const float* bias, float* y, int64_t N, int64_t Kp, int64_t m0, int64_t n0) {
  const int64_t G = Kp / group, row_bytes = Kp / 2;
  const __m512i lut = _mm512_load_si512(kNibbleBf16);
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  __m512 facc[MR][NR];
  float corr[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) facc[i][j] = _mm512_setzero_ps(), corr[i][j] = 0.0f;
  for (int64_t g = 0; g < G; ++g) {
    // Two accumulators per output (even / odd blocks): vdpbf16ps has a long latency.
    __m512 acc[2][MR][NR];
    for (int u = 0; u < 2; ++u)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[u][i][j] = _mm512_setzero_ps();
    for (int64_t b = g * group; b < (g + 1) * group; b += 64) {
      for (int u = 0; u < 2; ++u) {
        const int64_t bb = b + 32 * u;
        __m512i wv[NR];
        for (int j = 0; j < NR; ++j) {
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (n0 + j) * row_bytes + bb / 2));
          const __m512i words = _mm512_srlv_epi16(_mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(bytes)), shift);
          wv[j] = _mm512_permutexvar_epi16(words, lut);
        }
        for (int i = 0; i < MR; ++i) {
          const __m512i xv = _mm512_loadu_si512(xb + (m0 + i) * Kp + bb);
          for (int j = 0; j < NR; ++j) acc[u][i][j] = _mm512_dpbf16_ps(acc[u][i][j], as_bh(xv), as_bh(wv[j]));
        }
      }
    }
    for (int j = 0; j < NR; ++j) {
      const float sc = load_scale(s, (n0 + j) * G + g, s_bf16);
      const __m512 sv = _mm512_set1_ps(sc);
      for (int i = 0; i < MR; ++i) {
        facc[i][j] = _mm512_fmadd_ps(sv, _mm512_add_ps(acc[0][i][j], acc[1][i][j]), facc[i][j]);
        corr[i][j] += sc * xg[(m0 + i) * G + g];
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t n = n0 + j;
      y[(m0 + i) * N + n] = _mm512_reduce_add_ps(facc[i][j]) - 8.0f * corr[i][j] + (bias ? bias[n] : 0.0f);
    }
}

void w4_bf16(const float* x, const uint16_t* xb, const float* xg, const uint8_t* w, const void* s, bool s_bf16,
             int64_t group, const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  (void)x;
  auto body = [&](auto mr, auto nr, int64_t m0, int64_t nn) {
    w4bf_tile<decltype(mr)::value, decltype(nr)::value>(xb, xg, w, s, s_bf16, group, bias, y, N, Kp, m0, nn);
  };
  if (M == 1) for_tiles<1, 4>(M, n0, n1, body);
  else for_tiles<4, 2>(M, n0, n1, body);
}

}  // namespace

const Table& table(bool bf16) {
  static const Table with_bf16{"avx512vnni+bf16", true, int8_dyn, w8, w4_bf16};
  static const Table without{"avx512vnni", true, int8_dyn, w8, w4_f32};
  return bf16 ? with_bf16 : without;
}

}  // namespace ft::quant::avx512vnni
