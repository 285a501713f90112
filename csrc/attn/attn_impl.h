// The attention drivers (forward, backward), templated over an ISA's two hot primitives:
//   Ops::gemm      C[M x N] (+)= A B, A read through strides (so A^T costs nothing), B row-major
//   Ops::exp2_row  x[j] = 2^(x[j] * mul - sub) for j < n, returns the sum
// Each ISA file includes this header and instantiates the drivers with its own Ops (internal linkage:
// see common.h on why no inline definition may be shared between ISA files).
//
// Per (batch, head) pair, with c = scale * log2(e) and blocks of kBq query rows:
//   forward   S = Q K^T (only key blocks at or left of the diagonal when causal), s2 = c S,
//             lse2 = max + log2(sum 2^(s2 - max)), P = 2^(s2 - lse2), O = P V
//   backward  Di = rowsum(dO * O), recompute P from lse2, dP = dO V^T, dS = scale P (dP - Di),
//             dQ = dS K, dK += dS^T Q, dV += P^T dO
// as in FlashAttention-2's backward, but whole rows at a time. fp32 throughout.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attn.h"

namespace ft::attn {
namespace {

constexpr int64_t kBq = 64;  // query rows per block: 64 x T fp32 scores (T = 1024: 256 KiB, in L2)
constexpr float kLog2e = 1.4426950408889634f;

// Portable primitives (the scalar and AVX2 builds; loops written for the auto-vectorizer).
struct PortableOps {
  static void gemm(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C, int64_t ldc,
                   int64_t M, int64_t N, int64_t K, bool acc) {
    for (int64_t m = 0; m < M; ++m) {
      float* c = C + m * ldc;
      if (!acc) std::fill(c, c + N, 0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const float a = A[m * ars + k * aks];
        const float* b = B + k * ldb;
        for (int64_t n = 0; n < N; ++n) c[n] += a * b[n];
      }
    }
  }

  // x[j] = 2^(x[j] * mul - sub), returns the sum. 2^t for t in [-126, 0] (and more): 2^round(t) times
  // a degree-7 Taylor polynomial of 2^f on [-1/2, 1/2] (relative error < 1e-8, below fp32's ulp).
  static float exp2_row(float* x, int64_t n, float mul, float sub) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      const float t = std::max(x[j] * mul - sub, -126.0f);
      const float r = std::floor(t + 0.5f);
      const float f = t - r;
      float p = 1.5252734e-05f;
      p = p * f + 1.5403530e-04f;
      p = p * f + 1.3333558e-03f;
      p = p * f + 9.6181291e-03f;
      p = p * f + 5.5504109e-02f;
      p = p * f + 2.4022651e-01f;
      p = p * f + 6.9314718e-01f;
      p = p * f + 1.0f;
      const uint32_t e = uint32_t(int32_t(r) + 127) << 23;
      float s;
      std::memcpy(&s, &e, 4);
      x[j] = p * s;
      sum += x[j];
    }
    return sum;
  }
};

// Element i of a DT array as fp32. A typed load per dtype (no switch in the loop), so the fp32 and
// bf16 tile copies below vectorize.
template <DType DT>
inline float in_f32(const void* p, int64_t i) {
  if constexpr (DT == DType::f32) return static_cast<const float*>(p)[i];
  else if constexpr (DT == DType::bf16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// Copies rows [0, T) of one (b, h) slice of v into dst (T x D fp32, row stride D) or, transposed,
// into dst (D x T, row stride T).
template <DType DT>
void load_tile(const View& v, int64_t b, int64_t h, int64_t T, int64_t D, float* dst, bool transpose) {
  const int64_t base = b * v.sb + h * v.sh;
  if (transpose) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t d = 0; d < D; ++d) dst[d * T + t] = in_f32<DT>(v.data, base + t * v.st + d);
  } else {
    for (int64_t t = 0; t < T; ++t) {
      float* row = dst + t * D;
      const int64_t off = base + t * v.st;
      for (int64_t d = 0; d < D; ++d) row[d] = in_f32<DT>(v.data, off + d);
    }
  }
}

template <DType DT>
void store_rows(const View& v, int64_t b, int64_t h, int64_t t0, int64_t rows, int64_t D, const float* src) {
  const int64_t base = b * v.sb + h * v.sh;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * D;
    const int64_t off = base + (t0 + r) * v.st;
    if constexpr (DT == DType::f32) {
      std::memcpy(static_cast<float*>(v.data) + off, row, size_t(D) * sizeof(float));
    } else {
      uint16_t* out = static_cast<uint16_t*>(v.data) + off;
      for (int64_t d = 0; d < D; ++d) out[d] = DT == DType::bf16 ? f32_to_bf16(row[d]) : f32_to_f16(row[d]);
    }
  }
}

template <class Ops, DType DT>
void forward_dt(const Args& a, int threads) {
  const int64_t T = a.T, D = a.D, BH = a.B * a.H;
  const float c = a.scale * kLog2e;
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(threads, BH)))
  {
    std::vector<float> q(size_t(T * D)), kt(size_t(D * T)), v(size_t(T * D)), s(size_t(kBq * T)), o(size_t(kBq * D));
    float inv[kBq];
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const int64_t b = bh / a.H, h = bh % a.H;
      load_tile<DT>(a.q, b, h, T, D, q.data(), false);
      load_tile<DT>(a.k, b, h, T, D, kt.data(), true);
      load_tile<DT>(a.v, b, h, T, D, v.data(), false);
      float* lse = a.lse + bh * T;
      for (int64_t i0 = 0; i0 < T; i0 += kBq) {
        const int64_t rows = std::min(kBq, T - i0), cols = a.causal ? i0 + rows : T;
        Ops::gemm(q.data() + i0 * D, D, 1, kt.data(), T, s.data(), T, rows, cols, D, false);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * T;
          const int64_t valid = a.causal ? i0 + r + 1 : T;
          // max of c * row, from the row's max and min (c < 0 for a negative scale). A NaN score makes the
          // row NaN (as torch): max/min skip NaN, the NaN then flows through exp2.
          float hi = -INFINITY, lo = INFINITY;
          for (int64_t j = 0; j < valid; ++j) {
            hi = std::max(hi, row[j]);
            lo = std::min(lo, row[j]);
          }
          const float mx = std::max(c * hi, c * lo);
          const float sum = Ops::exp2_row(row, valid, c, mx);
          std::fill(row + valid, row + cols, 0.0f);
          inv[r] = 1.0f / sum;
          lse[i0 + r] = mx + std::log2(sum);
        }
        Ops::gemm(s.data(), T, 1, v.data(), D, o.data(), D, rows, D, cols, false);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t d = 0; d < D; ++d) o[size_t(r * D + d)] *= inv[r];
        store_rows<DT>(a.o, b, h, i0, rows, D, o.data());
      }
    }
  }
}

template <class Ops, DType DT>
void backward_dt(const Args& a, int threads) {
  const int64_t T = a.T, D = a.D, BH = a.B * a.H;
  const float c = a.scale * kLog2e;
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(threads, BH)))
  {
    std::vector<float> q(size_t(T * D)), kt(size_t(D * T)), k(size_t(T * D)), vt(size_t(D * T)), dout(size_t(T * D)),
        o(size_t(T * D)), dk(size_t(T * D)), dv(size_t(T * D)), p(size_t(kBq * T)), ds(size_t(kBq * T)),
        dq(size_t(kBq * D)), di(static_cast<size_t>(T));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const int64_t b = bh / a.H, h = bh % a.H;
      load_tile<DT>(a.q, b, h, T, D, q.data(), false);
      load_tile<DT>(a.k, b, h, T, D, k.data(), false);
      for (int64_t t = 0; t < T; ++t)  // K^T from the fp32 tile: no second read of k's source rows
        for (int64_t d = 0; d < D; ++d) kt[size_t(d * T + t)] = k[size_t(t * D + d)];
      load_tile<DT>(a.v, b, h, T, D, vt.data(), true);
      load_tile<DT>(a.dout, b, h, T, D, dout.data(), false);
      load_tile<DT>(a.o, b, h, T, D, o.data(), false);
      for (int64_t t = 0; t < T; ++t) {
        float acc = 0.0f;
        for (int64_t d = 0; d < D; ++d) acc += dout[size_t(t * D + d)] * o[size_t(t * D + d)];
        di[size_t(t)] = acc;
      }
      std::fill(dk.begin(), dk.end(), 0.0f);
      std::fill(dv.begin(), dv.end(), 0.0f);
      const float* lse = a.lse + bh * T;
      for (int64_t i0 = 0; i0 < T; i0 += kBq) {
        const int64_t rows = std::min(kBq, T - i0), cols = a.causal ? i0 + rows : T;
        Ops::gemm(q.data() + i0 * D, D, 1, kt.data(), T, p.data(), T, rows, cols, D, false);
        Ops::gemm(dout.data() + i0 * D, D, 1, vt.data(), T, ds.data(), T, rows, cols, D, false);
        for (int64_t r = 0; r < rows; ++r) {
          float* pr = p.data() + r * T;
          float* dr = ds.data() + r * T;
          const int64_t valid = a.causal ? i0 + r + 1 : T;
          Ops::exp2_row(pr, valid, c, lse[i0 + r]);
          std::fill(pr + valid, pr + cols, 0.0f);
          const float dri = di[size_t(i0 + r)];
          for (int64_t j = 0; j < cols; ++j) dr[j] = pr[j] * (dr[j] - dri) * a.scale;
        }
        Ops::gemm(ds.data(), T, 1, k.data(), D, dq.data(), D, rows, D, cols, false);
        store_rows<DT>(a.dq, b, h, i0, rows, D, dq.data());
        Ops::gemm(ds.data(), 1, T, q.data() + i0 * D, D, dk.data(), D, cols, D, rows, true);
        Ops::gemm(p.data(), 1, T, dout.data() + i0 * D, D, dv.data(), D, cols, D, rows, true);
      }
      store_rows<DT>(a.dk, b, h, 0, T, D, dk.data());
      store_rows<DT>(a.dv, b, h, 0, T, D, dv.data());
    }
  }
}

template <class Ops>
void forward(const Args& a, int threads) {
  with_dtype(a.dt, [&](auto d) { forward_dt<Ops, decltype(d)::value>(a, threads); });
}

template <class Ops>
void backward(const Args& a, int threads) {
  with_dtype(a.dt, [&](auto d) { backward_dt<Ops, decltype(d)::value>(a, threads); });
}

}  // namespace
}  // namespace ft::attn
