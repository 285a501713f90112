// AVX-512 quantized linear kernels: int8 x int8 and int4 x 16-bit activations with VNNI (vpdpbusd), int8
// weights with fp32 activations via shuffle + convert + FMA. Compiled with VNNI + BF16 flags
// (CMakeLists.txt); quant.cpp calls these only after __builtin_cpu_supports("avx512vnni").
//
// vpdpbusd multiplies unsigned bytes by signed bytes, so activations are stored as u = q + 128 and
// sum_k u w = sum_k q w + 128 * sum_k w: the driver passes the weight row sums to undo the excess
// (the usual trick, as in oneDNN / FBGEMM; written here from the identity).
#include <immintrin.h>

#include <cmath>

#include "../simd_avx512.h"
#include "quant.h"

namespace ft::quant::avx512vnni {
namespace {

// int8 weights are VNNI-blocked (quant.h): block b holds columns [16b, 16b + 16) as (Kp / 4, 16, 4), so one
// 64-byte load gives 4 consecutive k for 16 columns, the exact operand of vpdpbusd against a broadcast of 4
// activation bytes. Accumulators are then 16 output columns wide: no horizontal sums, vector epilogues, and
// a register tile of MR rows x NB blocks (the oneDNN / FBGEMM micro-kernel shape; written here from that idea).

inline __mmask16 tail_mask(int64_t n, int64_t N) {
  const int64_t left = N - n;
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
}

// y[m, cols] = acc_f * scale(m, cols) + bias[cols] for 16 columns starting at n (masked at the N edge).
inline void store_cols(float* y, const float* bias, __m512 v, __m512 colscale, float rowscale, int64_t n,
                       int64_t N, __mmask16 mk) {
  __m512 r = _mm512_mul_ps(v, _mm512_mul_ps(colscale, _mm512_set1_ps(rowscale)));
  if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mk, bias + n));
  _mm512_mask_storeu_ps(y, mk, r);
}

// Loops over register tiles: blocks of 16 columns in steps of NBMAX (outer: the weight panel stays in L2
// while every row tile of x streams past it), rows in steps of MRMAX; edge tiles get their own instantiation.
template <int MRMAX, int NBMAX, class F>
inline void for_block_tiles(int64_t M, int64_t b0, int64_t b1, F&& f) {
  for (int64_t b = b0; b < b1; b += NBMAX) {
    const int nb = int(std::min<int64_t>(NBMAX, b1 - b));
    for (int64_t m = 0; m < M; m += MRMAX) {
      const int mr = int(std::min<int64_t>(MRMAX, M - m));
      with_int<MRMAX>(mr, [&](auto mr_c) { with_int<NBMAX>(nb, [&](auto nb_c) { f(mr_c, nb_c, m, b); }); });
    }
  }
}

// Software prefetch distance of the batch-1 kernels, which read one sequential weight stream per thread:
// bandwidth x DRAM latency (~23 GB/s x ~150 ns ~ 3.5 KB) must be in flight; 1 KB left int4 (which consumes
// a line fastest) at ~15 GB/s single-thread while 4 streams x 1 KB (int8 fp32 path) reached ~23 GB/s.
#ifndef FT_QUANT_AHEAD
#define FT_QUANT_AHEAD 4096
#endif
constexpr int64_t kAhead = FT_QUANT_AHEAD;

// vpdpbusd accumulating in place. GCC 12's intrinsic makes a register copy of the accumulator before every
// vpdpbusd and keeps a 6 x 4 tile's accumulators in memory (stored on every k step); the tied "+v" operand
// keeps each accumulator in one register.
inline void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}

// MR rows x NB blocks; U independent accumulator sets over alternating k4 steps (for MR = 1 there would be
// only NB dependency chains, fewer than vpdpbusd's latency x throughput).
template <int MR, int NB>
__attribute__((noinline)) void dyn_tile(const uint8_t* x, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
                     const float* bias, float* y, int64_t N, int64_t Kp, int64_t m0, int64_t b0) {
  constexpr int U = MR > 2 ? 1 : NB == 1 ? 4 : 2;
  const int64_t K4 = Kp / 4;
  __m512i acc[U][MR][NB];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) acc[u][i][j] = _mm512_setzero_si512();
  const int8_t* wb[NB];
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) wb[j] = w + (b0 + j) * K4 * 64;
  const int32_t* xr[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) xr[i] = reinterpret_cast<const int32_t*>(x + (m0 + i) * Kp);
  for (int64_t k4 = 0; k4 < K4; k4 += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      __m512i wv[NB];
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        // Batch 1 streams the weights from memory: fetch ~1 KB ahead of each block's stream.
        if constexpr (MR <= 2) _mm_prefetch(reinterpret_cast<const char*>(wb[j] + (k4 + u) * 64 + kAhead), _MM_HINT_T0);
        wv[j] = _mm512_loadu_si512(wb[j] + (k4 + u) * 64);
      }
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512i xv = _mm512_set1_epi32(xr[i][k4 + u]);
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) dpbusd(acc[u][i][j], xv, wv[j]);
      }
    }
  }
  // (Fully unrolled: a rolled epilogue makes GCC keep acc[][] in memory and store it on every k step.)
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (b0 + j) * 16;
    const __mmask16 mk = tail_mask(n, N);
    const __m512 cs = _mm512_maskz_loadu_ps(mk, sw + n);
    const __m512i excess = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mk, wsum + n), 7);  // 128 * wsum
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512i a = acc[0][i][j];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) a = _mm512_add_epi32(a, acc[u][i][j]);
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, excess));
      store_cols(y + (m0 + i) * N + n, bias, v, cs, sx[m0 + i], n, N, mk);
    }
  }
}

void int8_dyn(const void* xq, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
              const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  const uint8_t* x = static_cast<const uint8_t*>(xq);
  const int64_t b0 = n0 / 16, b1 = (n1 + 15) / 16;
  auto body = [&](auto mr, auto nb, int64_t m0, int64_t bb) {
    dyn_tile<decltype(mr)::value, decltype(nb)::value>(x, sx, w, sw, wsum, bias, y, N, Kp, m0, bb);
  };
  // 6 x 4 tiles: 24 accumulators + 4 weight vectors + 1 broadcast of the 32 zmm registers; 10 loads per
  // 24 vpdpbusd. Batch 1-2 is weight streaming: one block at a time with 4 accumulator sets, so a thread's
  // weights are read as one sequential stream (blocks are contiguous), which the prefetchers follow across
  // block and panel boundaries; 4 parallel block streams restarted every 64 columns measured slower at K = 1024.
  if (M <= 2) for_block_tiles<2, 1>(M, b0, b1, body);
  else for_block_tiles<6, 4>(M, b0, b1, body);
}

// int8 weight-only: fp32 activations. vpshufb moves byte kk of each column's 4-byte group to the top of its
// 32-bit lane (zeros below), so the lane reads w * 2^24 as an int32 and converts to fp32 exactly (at most 8
// significant bits); the 2^-24 is folded into the column scale. One shuffle + one convert per 16 weights.
inline __m512i top_byte_ctrl(int kk) {
  alignas(64) int8_t c[64];
  // vpshufb indexes within each 128-bit lane: byte 4j + kk of that lane; -128 (bit 7 set) writes a zero.
#pragma GCC unroll 8
  for (int i = 0; i < 64; ++i) c[i] = (i % 4 == 3) ? int8_t(((i % 16) / 4) * 4 + kk) : int8_t(-128);
  return _mm512_load_si512(c);
}

constexpr int64_t kChunkK4 = 64;  // k4 steps per partial sum: fp32 sums of <= 256 terms, then added up

template <int MR, int NB>
__attribute__((noinline)) void w8_tile(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t N,
                    int64_t Kp, int64_t m0, int64_t b0) {
  const int64_t K4 = Kp / 4;
  const __m512i ctrl[4] = {top_byte_ctrl(0), top_byte_ctrl(1), top_byte_ctrl(2), top_byte_ctrl(3)};
  __m512 tot[MR][NB];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) tot[i][j] = _mm512_setzero_ps();
  const int8_t* wb[NB];
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) wb[j] = w + (b0 + j) * K4 * 64;
  for (int64_t c0 = 0; c0 < K4; c0 += kChunkK4) {
    const int64_t c1 = std::min(K4, c0 + kChunkK4);
    // Two accumulator sets (even / odd k) per output: two FMA chains, and the sum of each set is short.
    __m512 acc[2][MR][NB];
#pragma GCC unroll 8
    for (int u = 0; u < 2; ++u)
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[u][i][j] = _mm512_setzero_ps();
    for (int64_t k4 = c0; k4 < c1; ++k4) {
      __m512i raw[NB];
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        if constexpr (MR == 1) _mm_prefetch(reinterpret_cast<const char*>(wb[j] + k4 * 64 + 1024), _MM_HINT_T0);
        raw[j] = _mm512_loadu_si512(wb[j] + k4 * 64);
      }
#pragma GCC unroll 8
      for (int kk = 0; kk < 4; ++kk) {
        __m512 wv[NB];
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) wv[j] = _mm512_cvtepi32_ps(_mm512_shuffle_epi8(raw[j], ctrl[kk]));
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
          const __m512 xv = _mm512_set1_ps(x[(m0 + i) * Kp + 4 * k4 + kk]);
#pragma GCC unroll 8
          for (int j = 0; j < NB; ++j) acc[kk & 1][i][j] = _mm512_fmadd_ps(xv, wv[j], acc[kk & 1][i][j]);
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) tot[i][j] = _mm512_add_ps(tot[i][j], _mm512_add_ps(acc[0][i][j], acc[1][i][j]));
  }
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (b0 + j) * 16;
    const __mmask16 mk = tail_mask(n, N);
    const __m512 cs = _mm512_maskz_loadu_ps(mk, sw + n);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) store_cols(y + (m0 + i) * N + n, bias, tot[i][j], cs, 0x1p-24f, n, N, mk);
  }
}

void w8(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t M, int64_t N,
        int64_t Kp, int64_t n0, int64_t n1) {
  const int64_t b0 = n0 / 16, b1 = (n1 + 15) / 16;
  auto body = [&](auto mr, auto nb, int64_t m0, int64_t bb) {
    w8_tile<decltype(mr)::value, decltype(nb)::value>(x, w, sw, bias, y, N, Kp, m0, bb);
  };
  // Registers: 2 * MR * NB accumulators + MR * NB totals + NB weights: 1 x 4 (12 + 4) and 3 x 2 (18 + 2).
  if (M == 1) for_block_tiles<1, 4>(M, b0, b1, body);
  else for_block_tiles<3, 2>(M, b0, b1, body);
}

// int4 weights x 16-bit activations through vpdpbusd: the nibbles u = q + 8 are the unsigned operand, the
// activation bytes h and l (q_x = 256 h + l) the signed one. One 64-byte load holds two 4-k steps of 16
// columns (low / high nibbles): and + shift + and unpack them, 4 vpdpbusd consume them (h and l of each
// step). Group sums stay exact in int32 (|256 sum h u| <= 256 * 15 * 127 * group < 2^31 for group <= 4096);
// each group ends with t = 256 Hsum + Lsum - 8 xs, one convert and one FMA with the 16 columns' scales.
template <int MR, int NB>
__attribute__((noinline)) void w4_tile(const Int4Act& x, const uint8_t* w, const void* s, bool s_bf16, int64_t group,
                    const float* bias, float* y, int64_t N, int64_t Kp, int64_t m0, int64_t b0) {
  const int64_t K8 = Kp / 8, G = Kp / group, P = group / 8;  // P: 64-byte steps per group
  const __m512i nib = _mm512_set1_epi8(15);
  __m512 tot[MR][NB];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) tot[i][j] = _mm512_setzero_ps();
  const uint8_t* wb[NB];
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) wb[j] = w + (b0 + j) * K8 * 64;
  const int32_t* xh[MR];
  const int32_t* xl[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    xh[i] = reinterpret_cast<const int32_t*>(x.h + (m0 + i) * Kp);
    xl[i] = reinterpret_cast<const int32_t*>(x.l + (m0 + i) * Kp);
  }
  // S accumulator sets: 2 (h and l sums) for register tiles, 4 (h and l, low and high nibbles apart) for the
  // small batch-1 tiles, where 2 chains of 2 dependent vpdpbusd per step would make latency the limit.
  constexpr int S = MR * NB <= 2 ? 4 : 2;
  for (int64_t g = 0; g < G; ++g) {
    // Blocked scales (quant.h): block b's group scales are one sequential 64-byte (fp32) / 32-byte (bf16) step
    // per group, contiguous across blocks, so 8 groups ahead in the same stream also runs into the next
    // tile's blocks (a group of one block takes ~25 ns at batch 1).
    constexpr int64_t kScaleAhead = 8;
    if (g + kScaleAhead < G || b0 + NB < (N + 15) / 16)
      _mm_prefetch(reinterpret_cast<const char*>(s) + ((b0 + NB - 1) * G + g + kScaleAhead) * 16 * (s_bf16 ? 2 : 4), _MM_HINT_T0);
    __m512i acc[S][MR][NB];
#pragma GCC unroll 8
    for (int a = 0; a < S; ++a)
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) acc[a][i][j] = _mm512_setzero_si512();
    for (int64_t p = g * P; p < (g + 1) * P; ++p) {
      __m512i lo[NB], hi[NB];
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        if constexpr (MR <= 2) _mm_prefetch(reinterpret_cast<const char*>(wb[j] + p * 64 + kAhead), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(wb[j] + p * 64);
        lo[j] = _mm512_and_si512(v, nib);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
      }
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        // 4-byte groups of x at k = 8p (low nibbles) and 8p + 4 (high nibbles): int32 index 2p and 2p + 1.
        const __m512i h0 = _mm512_set1_epi32(xh[i][2 * p]), h1 = _mm512_set1_epi32(xh[i][2 * p + 1]);
        const __m512i l0 = _mm512_set1_epi32(xl[i][2 * p]), l1 = _mm512_set1_epi32(xl[i][2 * p + 1]);
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) {
          dpbusd(acc[0][i][j], lo[j], h0);
          dpbusd(acc[1][i][j], lo[j], l0);
          dpbusd(acc[S - 2][i][j], hi[j], h1);
          dpbusd(acc[S - 1][i][j], hi[j], l1);
        }
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
      const int64_t si = ((b0 + j) * G + g) * 16;  // padded blocks have all 16 scales: no mask
      const __m512 sv = s_bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                     reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(s) + si))), 16))
                               : _mm512_loadu_ps(static_cast<const float*>(s) + si);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512i corr = _mm512_set1_epi32(8 * x.xs[(m0 + i) * G + g]);
        __m512i hs = acc[0][i][j], ls = acc[1][i][j];
        if constexpr (S == 4) hs = _mm512_add_epi32(hs, acc[2][i][j]), ls = _mm512_add_epi32(ls, acc[3][i][j]);
        const __m512i t = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(hs, 8), ls), corr);
        tot[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sv, tot[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (b0 + j) * 16;
    const __mmask16 mk = tail_mask(n, N);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) store_cols(y + (m0 + i) * N + n, bias, tot[i][j], _mm512_set1_ps(1.0f), x.sx[m0 + i], n, N, mk);
  }
}

void w4(const Int4Act& x, const uint8_t* w, const void* s, bool s_bf16, int64_t group, const float* bias, float* y,
        int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  const int64_t b0 = n0 / 16, b1 = (n1 + 15) / 16;
  auto body = [&](auto mr, auto nb, int64_t m0, int64_t bb) {
    w4_tile<decltype(mr)::value, decltype(nb)::value>(x, w, s, s_bf16, group, bias, y, N, Kp, m0, bb);
  };
  // Registers: 2 * MR * NB int32 + MR * NB fp32 accumulators, 2 * NB unpacked weights, 4 broadcasts.
  // Batch 1-2: one block at a time, one sequential weight stream per thread (as the int8 GEMV; min-of-25
  // single-thread 8192 x 8192 runs: 2.2-2.8 ms with 1 block, 3.8-4.1 ms with 2 blocks 64 KB apart);
  // larger batches 3 x 2 (18 accumulators).
  if (M <= 2) for_block_tiles<2, 1>(M, b0, b1, body);
  else for_block_tiles<3, 2>(M, b0, b1, body);
}

template <DType D>
void quant_rows_t(const void* x, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* xq, float* sx,
                  uint8_t offset) {
  using simd512::mask_for;
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t base = m * K;
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(simd512::load<D>(x, base + k, mask_for(K - k))));
    const float amax = _mm512_reduce_max_ps(vmax);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    sx[m] = amax / 127.0f;
    uint8_t* q = xq + m * Kp;
    const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    const __m128i off = _mm_set1_epi8(char(offset));
    // Padding columns (K..Kp) read x as 0 through the mask and store the stored form of 0.
    for (int64_t k = 0; k < Kp; k += 16) {
      const __mmask16 mk = k < K ? mask_for(K - k) : __mmask16(0);
      // Clamping before the round is the same as after: the bounds are integers. cvtps2dq rounds half to even.
      const __m512 v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_ps(simd512::load<D>(x, base + k, mk), vinv)));
      const __m128i b = _mm_add_epi8(_mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)), off);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), b);
    }
  }
}

void quant_rows(const void* x, bool x_bf16, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* xq, float* sx,
                uint8_t offset) {
  if (x_bf16) quant_rows_t<DType::bf16>(x, m0, m1, K, Kp, xq, sx, offset);
  else quant_rows_t<DType::f32>(x, m0, m1, K, Kp, xq, sx, offset);
}

// int4 activation prep, 16 values per step: the same fp32 multiply, clamp and round-half-even convert as
// prep4_generic (quant.h), then q = 256 h + l split with integer shifts and narrowed by vpmovdw / vpmovdb.
template <DType D>
void prep4_t(const void* x, int64_t m, int64_t K, int64_t Kp, int64_t group, int16_t* q, int8_t* h, int8_t* l,
             int32_t* xs, float* sx) {
  using simd512::mask_for;
  const int64_t base = m * K, G = Kp / group;
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(simd512::load<D>(x, base + k, mask_for(K - k))));
  const float amax = _mm512_reduce_max_ps(vmax);
  const float inv = amax > 0.0f ? kInt16QMax / amax : 0.0f;
  sx[m] = amax / kInt16QMax;
  const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-kInt16QMax), hi = _mm512_set1_ps(kInt16QMax);
  const __m512i c128 = _mm512_set1_epi32(128);
  for (int64_t g = 0; g < G; ++g) {
    __m512i gsum = _mm512_setzero_si512();
    for (int64_t k = g * group; k < (g + 1) * group; k += 16) {
      const __mmask16 mk = k < K ? mask_for(K - k) : __mmask16(0);  // padding reads 0
      const __m512 v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_ps(simd512::load<D>(x, base + k, mk), vinv)));
      const __m512i qi = _mm512_cvtps_epi32(v);
      const __m512i hv = _mm512_srai_epi32(_mm512_add_epi32(qi, c128), 8);
      const __m512i lv = _mm512_sub_epi32(qi, _mm512_slli_epi32(hv, 8));
      const int64_t i = m * Kp + k;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm512_cvtepi32_epi16(qi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), _mm512_cvtepi32_epi8(hv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(l + i), _mm512_cvtepi32_epi8(lv));
      gsum = _mm512_add_epi32(gsum, qi);
    }
    xs[m * G + g] = _mm512_reduce_add_epi32(gsum);
  }
}

void prep4(const void* x, bool x_bf16, int64_t m, int64_t K, int64_t Kp, int64_t group, int16_t* q, int8_t* h,
           int8_t* l, int32_t* xs, float* sx) {
  if (x_bf16) prep4_t<DType::bf16>(x, m, K, Kp, group, q, h, l, xs, sx);
  else prep4_t<DType::f32>(x, m, K, Kp, group, q, h, l, xs, sx);
}

}  // namespace

const Table& table() {
  static const Table t{"avx512vnni", true, int8_dyn, w8, w4, quant_rows, prep4};
  return t;
}

}  // namespace ft::quant::avx512vnni
