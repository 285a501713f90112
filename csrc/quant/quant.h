// Quantized linear kernels: torch-free, raw pointers, one file per ISA.
//
// Layouts (produced by fasttrain.ops.quant's packers; K is the input width, Kp the padded width):
//   int8 weights   w:  VNNI-blocked (Np / 16, Kp / 4, 16, 4) int8, symmetric per output channel,
//                  Kp = round_up(K, 64), Np = round_up(N, 16), zero padded: element [b, k4, j, kk] is
//                  W[16 b + j, 4 k4 + kk]. One 64-byte row of a block is the vpdpbusd operand for 4 k of
//                  16 columns (layout version 2; version 1 was row-major (N, Kp)). Every ISA reads this
//                  same buffer (int8_index below).
//                  sw: (N,) fp32 scales; wsum: (N,) int32 row sums of w (for the VNNI u8 x s8 trick).
//   int4 weights   w:  blocked (Np / 16, Kp / 8, 16, 4) uint8, Kp = round_up(K, group), group a multiple of
//                  64; byte [b, p, j, kk] holds u = q + 8 (q in [-8, 7]) of W[16 b + j, 8 p + kk] in its low
//                  nibble and of W[16 b + j, 8 p + 4 + kk] in its high nibble: one 64-byte load, masked and
//                  shifted, gives the vpdpbusd operands of two consecutive 4-k steps of 16 columns
//                  (layout version 2; version 1 was (N, Kp / 2) in 32-value nibble blocks).
//                  s:  (Np / 16, Kp / group, 16) fp32 or bf16 scales, blocked like the weights (layout version
//                  3): element [b, g, j] scales W[16 b + j, group g], so a block's scales are one sequential
//                  stream beside its weights (version 2 stored (Kp / group, N): one new cache line per group,
//                  N apart; version 1 (N, Kp / group)). Padding channels hold scale 1.
// Activations reach the kernels already padded to Kp (zeros), so inner loops have no tails.
// Every kernel computes output channels [n0, n1) for all M rows; the driver (quant.cpp) threads over N.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../common.h"

namespace ft::quant {

constexpr int64_t kAlignK = 64;  // K padding: one 512-bit vector of int8
constexpr int64_t kBlockCols = 16;  // output columns per VNNI block of the int8 layout


// y[m, n] = (sum_k xq[m, k] w[n, k]) * sx[m] * sw[n] + bias[n]. xq is uint8 (q + 128) when the table's
// xq_unsigned is true (VNNI: vpdpbusd multiplies u8 by s8; the 128 * wsum[n] excess is subtracted),
// else int8.
using Int8DynFn = void (*)(const void* xq, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
                           const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1);
// y[m, n] = sw[n] * sum_k x[m, k] w[n, k] + bias[n]; x fp32 (M, Kp).
using W8Fn = void (*)(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t M,
                      int64_t N, int64_t Kp, int64_t n0, int64_t n1);
// int4: activations quantized per token to 16 bits by the driver: q (M, Kp) int16 in [-32639, 32639] with
// row scale sx, also split q = 256 h + l into signed bytes h, l (VNNI operands), and xs[m, g] the sum of q
// over group g. y[m, n] = sx[m] * sum_g s[n, g] * t[m, n, g] + bias[n] with the exact integer group sums
// t = sum_{k in g} q[m, k] (u[n, k] - 8) = 256 (sum h u) + (sum l u) - 8 xs[m, g].
struct Int4Act {
  const int16_t* q;
  const int8_t* h;
  const int8_t* l;
  const int32_t* xs;
  const float* sx;
};
using W4Fn = void (*)(const Int4Act& x, const uint8_t* w, const void* s, bool s_bf16, int64_t group,
                      const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1);
// int4 activation prep of row m: x (fp32 or bf16, K wide) -> q, h, l (Kp wide, zero padded), xs[m, g] and
// sx[m] as described above (the arrays are the full (M, Kp) / (M, G) / (M,) buffers). Exactly
// fasttrain.ops.reference.quantize_per_token_int16_reference.
using Int4PrepFn = void (*)(const void* x, bool x_bf16, int64_t m, int64_t K, int64_t Kp, int64_t group, int16_t* q,
                            int8_t* h, int8_t* l, int32_t* xs, float* sx);
constexpr float kInt16QMax = 32639.0f;  // 127 * 256 + 127: q splits into two signed bytes

// Per-token symmetric int8 quantization of rows [m0, m1) of x (fp32 or bf16, K wide) into xq (Kp wide):
// sx[m] = amax / 127, q = round_half_even(x * (127 / amax)) clamped to [-127, 127] (amax = 0: all zeros,
// scale 0), stored as q + offset (offset 128: the u8 operand of vpdpbusd; 0: the int8 bits); the padding
// columns hold the stored form of 0. Exactly fasttrain.ops.reference.quantize_per_token_reference.
using QuantRowsFn = void (*)(const void* x, bool x_bf16, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* xq,
                             float* sx, uint8_t offset);

struct Table {
  const char* name;
  bool xq_unsigned;
  Int8DynFn int8_dyn;
  W8Fn w8;
  W4Fn w4;
  QuantRowsFn quant_rows;
  Int4PrepFn prep4;
};

namespace scalar { const Table& table(); }
#if FT_X86
namespace avx2 { const Table& table(); }
namespace avx512vnni { const Table& table(); }
#endif

namespace {  // internal linkage: every ISA file instantiates these with its own flags

// Offset of W[n, k] in the blocked int8 layout.
inline int64_t int8_index(int64_t n, int64_t k, int64_t Kp) {
  return ((n / kBlockCols) * (Kp / 4) + k / 4) * (4 * kBlockCols) + (n % kBlockCols) * 4 + k % 4;
}

// The stored nibble u = q + 8 of W[n, k] in the blocked int4 layout.
inline int int4_at(const uint8_t* w, int64_t n, int64_t k, int64_t Kp) {
  const uint8_t b = w[((n / kBlockCols) * (Kp / 8) + k / 8) * (4 * kBlockCols) + (n % kBlockCols) * 4 + k % 4];
  return (k % 8) < 4 ? (b & 15) : (b >> 4);
}

// Offset of the scale of output n, group g in the blocked (Np / 16, G, 16) int4 scales.
inline int64_t int4_scale_index(int64_t n, int64_t g, int64_t G) {
  return ((n / kBlockCols) * G + g) * kBlockCols + n % kBlockCols;
}

// Portable int4 activation prep (Int4PrepFn): the scalar and AVX2 tables compile it with their own flags.
template <class LoadF>
inline void prep4_generic(LoadF&& load, int64_t m, int64_t K, int64_t Kp, int64_t group, int16_t* q, int8_t* h,
                          int8_t* l, int32_t* xs, float* sx) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(load(k)));
  const float inv = amax > 0.0f ? kInt16QMax / amax : 0.0f;
  sx[m] = amax / kInt16QMax;
  const int64_t G = Kp / group;
  for (int64_t g = 0; g < G; ++g) {
    int32_t acc = 0;
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      float v = k < K ? std::nearbyint(load(k) * inv) : 0.0f;  // round half to even, as torch.round
      v = std::min(kInt16QMax, std::max(-kInt16QMax, v));
      const int32_t qi = int32_t(v);
      const int32_t hi = (qi + 128) >> 8;  // q = 256 h + l with h in [-127, 127], l in [-128, 127]
      const int64_t i = m * Kp + k;
      q[i] = int16_t(qi);
      h[i] = int8_t(hi);
      l[i] = int8_t(qi - 256 * hi);
      acc += qi;
    }
    xs[m * G + g] = acc;
  }
}

inline void prep4_portable(const void* x, bool x_bf16, int64_t m, int64_t K, int64_t Kp, int64_t group, int16_t* q,
                           int8_t* h, int8_t* l, int32_t* xs, float* sx) {
  if (x_bf16) {
    const uint16_t* r = static_cast<const uint16_t*>(x) + m * K;
    prep4_generic([r](int64_t k) { return bf16_to_f32(r[k]); }, m, K, Kp, group, q, h, l, xs, sx);
  } else {
    const float* r = static_cast<const float*>(x) + m * K;
    prep4_generic([r](int64_t k) { return r[k]; }, m, K, Kp, group, q, h, l, xs, sx);
  }
}

inline float load_scale(const void* s, int64_t i, bool bf16) {
  if (bf16) {
    uint32_t u = uint32_t(static_cast<const uint16_t*>(s)[i]) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
  return static_cast<const float*>(s)[i];
}

// Calls f(integral_constant<int, v>) for a runtime v in [1, MAX].
template <int MAX, class F>
inline void with_int(int v, F&& f) {
  if constexpr (MAX >= 1) {
    if (v == MAX) {
      f(std::integral_constant<int, MAX>{});
      return;
    }
    with_int<MAX - 1>(v, f);
  }
}

// Register tiling: channels in steps of NRMAX (outer, so a few weight rows stay in L1 while every row of x
// streams past them), rows in steps of MRMAX; the edge tiles get their own instantiation.
// f(mr_c, nr_c, m0, n0) with mr_c / nr_c integral constants.
template <int MRMAX, int NRMAX, class F>
inline void for_tiles(int64_t M, int64_t n0, int64_t n1, F&& f) {
  for (int64_t n = n0; n < n1; n += NRMAX) {
    const int nr = int(std::min<int64_t>(NRMAX, n1 - n));
    for (int64_t m = 0; m < M; m += MRMAX) {
      const int mr = int(std::min<int64_t>(MRMAX, M - m));
      with_int<MRMAX>(mr, [&](auto mr_c) { with_int<NRMAX>(nr, [&](auto nr_c) { f(mr_c, nr_c, m, n); }); });
    }
  }
}

}  // namespace

}  // namespace ft::quant
