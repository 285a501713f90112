// Blockwise 8-bit AdamW states (fasttrain.optim.AdamW(state_dtype="int8")): the code maps and the
// portable block kernel (scalar path; the AVX2 path compiles the same template with AVX2 flags).
//
// Blocks of kQBlock = 256 consecutive elements share one fp32 scale per state (the block's absmax).
// Both maps are square-root companders, so small values keep relative precision (a linear absmax
// code would flush most of exp_avg_sq to zero):
//   exp_avg    m: int8  q in [-127, 127], scale am = max|m|:       m = sign(q) * q^2 * (am / 127^2)
//   exp_avg_sq v: uint8 q in [0, 255] codes s = sqrt(v), scale as = max s:  s = q^2 * (as / 255^2), v = s^2
// Storing sqrt(v) costs nothing (the update needs sqrt(v) anyway) and with the compander on top
// the v code spans 255^-4 ~ 2e-10 of the block's max v (m: 127^-2 ~ 6e-5 of max |m|).
// Quantizing: x = |m| * (127^2 / am) (resp. s * (255^2 / as)), fp32, then
//   q = #{k >= 1 : x >= (k - 1/2)^2}  = round(sqrt(x)), ties up, computed exactly
// (an approximate sqrt is corrected by comparing x with the exact fp32 thresholds q^2 +- q + 1/4),
// so every ISA, thread count and the pure-torch reference (fasttrain.ops.reference.
// adamw_int8_reference) produce the same codes bit for bit. A nonzero s never gets code 0 (so a
// nonzero v never becomes 0 and the update m / (sqrt(v) + eps) cannot blow up). Non-finite values: if
// m + sqrt(v) is NaN for any element of a block (a NaN in either state), both of its scales are NaN;
// a block whose scale is not finite (NaN, or an Inf max) stores zero codes and reads back as NaN.
//
// Differences from bitsandbytes' 8-bit Adam (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
// Quantization"): bnb quantizes m and v themselves with a 256-entry "dynamic tree" map (quantize =
// binary search in the table, dequantize = table lookup); here both maps are closed-form (vectorizable
// arithmetic, no table), v is stored as sqrt(v), and nonzero v never rounds to zero.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "optim.h"

// No FMA contraction in this file's code: g++ contracts a * b + c into an FMA by default in C++ (even
// with -std=c++17) wherever the ISA allows it, so the AVX2 build would round differently from the
// scalar one and from the reference. Everything here has internal linkage, so each ISA file compiles
// its own copy with its own flags (an `inline` function shared by several ISA files is one symbol,
// and the linker may keep the AVX2 copy for the scalar path).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace ft::optim {
namespace {

constexpr float kQm2 = 127.0f * 127.0f;  // 16129: exp_avg codes up to 127, values up to 127^2 * am / 127^2
constexpr float kQv2 = 255.0f * 255.0f;  // 65025

// round(sqrt(x)) with ties up, exactly (see above), clamped to [0, qmax]; x >= 0 and finite.
[[maybe_unused]] int32_t sqrt_code(float x, int32_t qmax) {
  int32_t q = int32_t(std::sqrt(x) + 0.5f);  // within 1 of the answer
  const float qf = float(q);
  // (q + 1/2)^2 and (q - 1/2)^2 are exact in fp32 for q <= 256 (at most 19 significant bits).
  if (x >= qf * (qf + 1.0f) + 0.25f) ++q;
  else if (x < qf * (qf - 1.0f) + 0.25f) --q;
  return std::clamp(q, int32_t(0), qmax);
}

// The stored scale: max |x| over the block, NaN if any element is NaN (as torch.amax).
[[maybe_unused]] float block_scale(float amax, bool nan) { return nan ? std::numeric_limits<float>::quiet_NaN() : amax; }

// Quantizes n values of a block from fp32 scratch (new m and new s = sqrt(v)) into codes.
[[maybe_unused]] void quantize_block_scalar(const float* mb, const float* sb, int8_t* mq, uint8_t* vq, float am, float as,
                                  int64_t n) {
  const bool mok = std::isfinite(am) && am > 0.0f, vok = std::isfinite(as) && as > 0.0f;
  const float cm = mok ? kQm2 / am : 0.0f, cv = vok ? kQv2 / as : 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t q = mok ? sqrt_code(std::fabs(mb[i]) * cm, 127) : 0;
    mq[i] = int8_t(mb[i] < 0.0f ? -q : q);
    int32_t u = vok ? sqrt_code(sb[i] * cv, 255) : 0;
    if (vok && u == 0 && sb[i] > 0.0f) u = 1;
    vq[i] = uint8_t(u);
  }
}

// One block (n <= kQBlock elements): dequantize m and v, AdamW in fp32 (adamw_elem, torch's order),
// write p, then requantize with the block's new scales. Scratch stays in L1: one pass over memory.
[[maybe_unused]] void adamw_int8_block(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  float* p = b.p + off;
  const float* g = b.g + off;
  int8_t* mq = b.m + off;
  uint8_t* vq = b.v + off;
  const int64_t blk = off / kQBlock;
  const float dm = b.m_scale[blk] / kQm2, dv = b.v_scale[blk] / kQv2;
  alignas(64) float mb[kQBlock], sb[kQBlock];
  float am = 0.0f, as = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float qm = float(mq[i]), qv = float(vq[i]);
    float m = (qm * std::fabs(qm)) * dm;
    const float s = (qv * qv) * dv;
    float v = s * s;
    // adamw_elem (optim_elem.h) without amsgrad, restated here so that it compiles without contraction
    float gi = g[i] * a.grad_mul;
    if (a.maximize) gi = -gi;
    const float d = gi - m;
    m = a.one_minus_b1 < 0.5f ? std::fma(a.one_minus_b1, d, m) : std::fma(a.one_minus_b1 - 1.0f, d, gi);
    v = v * a.beta2;
    v = v + a.one_minus_b2 * gi * gi;
    const float sn = std::sqrt(v);
    p[i] = p[i] * a.decay + a.neg_step_size * m / (sn / a.bc2_sqrt + a.eps);
    mb[i] = m;
    sb[i] = sn;
    am = std::max(am, std::fabs(m));  // std::max(a, NaN) keeps a; NaNs are tracked apart
    as = std::max(as, sn);
    nan |= std::isnan(m + sn);
  }
  am = block_scale(am, nan);
  as = block_scale(as, nan);
  b.m_scale[blk] = am;
  b.v_scale[blk] = as;
  quantize_block_scalar(mb, sb, mq, vq, am, as, n);
}

// Span [off, off + n) of the 8-bit buffers, off a multiple of kQBlock.
[[maybe_unused]] void adamw_int8_span_scalar(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a) {
  for (int64_t i = 0; i < n; i += kQBlock) adamw_int8_block(b, off + i, std::min(kQBlock, n - i), a);
}

}  // namespace
}  // namespace ft::optim

#pragma GCC pop_options
