// Portable quantized linear kernels: the definition the SIMD paths must match, and the fallback on
// CPUs without AVX2.
#include <cmath>

#include "../common.h"
#include "quant.h"

namespace ft::quant::scalar {
namespace {

void int8_dyn(const void* xq, const float* sx, const int8_t* w, const float* sw, const int32_t* wsum,
              const float* bias, float* y, int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  (void)wsum;  // xq is signed here: no u8 offset to undo
  const int8_t* x = static_cast<const int8_t*>(xq);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xr = x + m * Kp;
      int32_t acc = 0;
      for (int64_t k = 0; k < Kp; ++k) acc += int32_t(xr[k]) * int32_t(w[int8_index(n, k, Kp)]);
      y[m * N + n] = float(acc) * (sx[m] * sw[n]) + (bias ? bias[n] : 0.0f);
    }
  }
}

void w8(const float* x, const int8_t* w, const float* sw, const float* bias, float* y, int64_t M, int64_t N,
        int64_t Kp, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * Kp;
      float acc = 0.0f;
      for (int64_t k = 0; k < Kp; ++k) acc += xr[k] * float(w[int8_index(n, k, Kp)]);
      y[m * N + n] = acc * sw[n] + (bias ? bias[n] : 0.0f);
    }
  }
}

void w4(const Int4Act& x, const uint8_t* w, const void* s, bool s_bf16, int64_t group, const float* bias, float* y,
        int64_t M, int64_t N, int64_t Kp, int64_t n0, int64_t n1) {
  const int64_t G = Kp / group;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      const int16_t* xr = x.q + m * Kp;
      float total = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        int32_t t = 0;
        for (int64_t k = g * group; k < (g + 1) * group; ++k) t += int32_t(xr[k]) * (int4_at(w, n, k, Kp) - 8);
        total += float(t) * load_scale(s, int4_scale_index(n, g, G), s_bf16);
      }
      y[m * N + n] = total * x.sx[m] + (bias ? bias[n] : 0.0f);
    }
  }
}

void quant_rows(const void* x, bool x_bf16, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* xq, float* sx,
                uint8_t offset) {
  const DType dt = x_bf16 ? DType::bf16 : DType::f32;
  for (int64_t m = m0; m < m1; ++m) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(load_f32(x, m * K + k, dt)));
    // Symmetric per-token scale; an all-zero row quantizes to zeros (scale 0) instead of dividing by 0.
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    sx[m] = amax / 127.0f;
    uint8_t* q = xq + m * Kp;
    for (int64_t k = 0; k < K; ++k) {
      float v = std::nearbyint(load_f32(x, m * K + k, dt) * inv);  // round half to even, as torch.round
      v = std::min(127.0f, std::max(-127.0f, v));
      q[k] = uint8_t(int8_t(v)) + offset;  // u8 = q + 128 for VNNI (wraps correctly), else the s8 bits
    }
    for (int64_t k = K; k < Kp; ++k) q[k] = offset;
  }
}

}  // namespace

const Table& table() {
  static const Table t{"scalar", false, int8_dyn, w8, w4, quant_rows, prep4_portable};
  return t;
}

}  // namespace ft::quant::scalar
