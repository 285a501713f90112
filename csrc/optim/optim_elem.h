// One element of each optimizer update in plain C++: the scalar path, and the tails of the SIMD
// paths. Order of operations follows torch.optim's single-tensor ("for-loop") implementations;
// CMakeLists.txt builds with -ffp-contract=off (GCC would contract a*b+c into an FMA in any mode), so
// only std::fma is fused, keeping the scalar and SIMD paths bit-identical where they both use fma.
#pragma once
#include <algorithm>
#include <cmath>

#include "optim.h"

namespace ft::optim {
// Internal linkage (anonymous namespace): this header is compiled into translation units built with
// different ISA flags. Shared `inline` definitions would be merged by the linker into one copy, so the
// scalar path could end up running an AVX-512-compiled body (SIGILL on CPUs without it).
namespace {

// Counter-based noise for stochastic rounding: element index -> 32 random bits, so the result does
// not depend on how elements are split over threads. (Mixing function: "lowbias32" by C. Wellons.)
inline uint32_t sr_hash(uint32_t seed, int64_t i) {
  uint32_t x = uint32_t(i) * 0x9E3779B9u + seed;
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// fp32 -> bf16, rounding up with probability equal to the dropped fraction (unbiased: E[round(x)] = x).
// Inf and NaN are never perturbed (adding noise to their bits would turn Inf into NaN).
inline uint16_t f32_to_bf16_sr(float f, uint32_t r) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return f32_to_bf16(f);
  u += r & 0xffffu;
  return uint16_t(u >> 16);
}

inline void adamw_elem(float& p, float g, float& m, float& v, float* max_v, const AdamWArgs& a) {
  g = g * a.grad_mul;  // exact when grad_mul is 1 or a power of two (GradScaler's scales)
  if (a.maximize) g = -g;
  p = p * a.decay;
  // torch.lerp: weight < 0.5 -> start + w * (end - start); else end - (end - start) * (1 - w), both as FMA.
  const float d = g - m;
  m = a.one_minus_b1 < 0.5f ? std::fma(a.one_minus_b1, d, m) : std::fma(a.one_minus_b1 - 1.0f, d, g);
  v = v * a.beta2;
  v = v + a.one_minus_b2 * g * g;  // addcmul: self + (value * t1) * t2
  float vv = v;
  if (a.amsgrad) {
    // torch.maximum propagates NaN; std::max(a, b) returns a when the comparison is false.
    *max_v = std::isnan(v) ? v : std::max(*max_v, v);
    vv = *max_v;
  }
  const float denom = std::sqrt(vv) / a.bc2_sqrt + a.eps;
  p = p + a.neg_step_size * m / denom;  // addcdiv: self + (value * t1) / t2
}

// torch.optim.SGD(foreach=False): Tensor.add(x, alpha=a) is an FMA on CPU, mul_ then add_ are two roundings.
inline void sgd_elem(float& p, float g, float* buf, const SgdArgs& a) {
  if (a.maximize) g = -g;
  if (a.weight_decay != 0.0f) g = std::fma(p, a.weight_decay, g);
  if (buf) {
    float b = a.first ? g : std::fma(g, a.one_minus_dampening, *buf * a.momentum);
    *buf = b;
    g = a.nesterov ? std::fma(b, a.momentum, g) : b;
  }
  p = std::fma(g, -a.lr, p);
}

// fasttrain.ops.reference.lion_reference, same order: p.mul_(decay); c = m * b1 + g * (1 - b1) (FMA, as
// Tensor.add(alpha)); p.add_(sign(c), alpha=-lr); m = m * b2, then FMA with g * (1 - b2).
inline void lion_elem(float& p, float g, float& m, const LionArgs& a) {
  if (a.maximize) g = -g;
  p = p * a.decay;
  const float c = std::fma(g, a.one_minus_b1, m * a.beta1);
  const float s = float(c > 0.0f) - float(c < 0.0f);  // torch.sign on CPU: (0 < x) - (x < 0), so sign(NaN) = 0
  p = std::fma(s, -a.lr, p);
  m = std::fma(g, a.one_minus_b2, m * a.beta2);
}

// Element i of a mixed-precision pass (the scalar path, and the tails of the SIMD paths).
template <DType P, DType S, bool MASTER>
inline void adamw_elem_mixed(const MixedBufs& b, int64_t i, const AdamWArgs& a) {
  float p = MASTER ? b.master[i] : load_f32(b.p, i, P);
  float m = load_f32(b.m, i, S), v = load_f32(b.v, i, S);
  float mx = a.amsgrad ? load_f32(b.max_v, i, S) : 0.0f;
  adamw_elem(p, load_f32(b.g, i, P), m, v, &mx, a);
  if (MASTER) b.master[i] = p;
  if (P == DType::bf16 && a.stochastic)
    static_cast<uint16_t*>(b.p)[i] = f32_to_bf16_sr(p, sr_hash(a.seed, i));
  else
    store_f32(b.p, i, P, p);
  store_f32(b.m, i, S, m);
  store_f32(b.v, i, S, v);
  if (a.amsgrad) store_f32(b.max_v, i, S, mx);
}

// Runtime (param dtype, state dtype, master) -> one template instantiation of Kernel<P, S, MASTER>.
template <template <DType, DType, bool> class Kernel>
inline void dispatch_mixed(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  with_dtype(b.pdt, [&](auto pd) {
    constexpr DType P = decltype(pd)::value;
    auto go = [&](auto sd) {
      constexpr DType S = decltype(sd)::value;
      if (b.master) Kernel<P, S, true>::run(b, off, n, a);
      else Kernel<P, S, false>::run(b, off, n, a);
    };
    if (b.sdt == DType::bf16) go(std::integral_constant<DType, DType::bf16>{});
    else go(std::integral_constant<DType, DType::f32>{});
  });
}

template <DType P, DType S, bool MASTER>
struct ElemLoop {
  static void run(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
    for (int64_t i = off; i < off + n; ++i) adamw_elem_mixed<P, S, MASTER>(b, i, a);
  }
};

}  // namespace
}  // namespace ft::optim
