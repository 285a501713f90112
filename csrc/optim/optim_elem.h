// One element of each optimizer update in plain C++: the scalar path, and the tails of the SIMD
// paths. Order of operations follows torch.optim's single-tensor ("for-loop") implementations;
// files are compiled in ISO mode (-std=c++17), so GCC does not contract a*b+c into an FMA unless
// written as std::fma, keeping the scalar and SIMD paths bit-identical where they both use fma.
#pragma once
#include <algorithm>
#include <cmath>

#include "optim.h"

namespace ft::optim {

inline void adamw_elem(float& p, float g, float& m, float& v, float* max_v, const AdamWArgs& a) {
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

}  // namespace ft::optim
