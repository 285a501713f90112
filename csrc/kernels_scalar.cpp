// Portable kernels: baseline-ISA C++ (the compiler may still use SSE2 on x86-64). They define the
// semantics the SIMD versions must reproduce and run on any CPU.
#include <algorithm>
#include <cmath>

#include "common.h"

namespace ft::scalar {
namespace {

// Sum of squares of elements [i, end): eight independent partial sums (shorter dependency
// chains and less rounding than one).
template <DType D>
float sumsq_block(const void* p, int64_t i, int64_t end) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= end; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float x = load_f32(p, i + j, D);
      acc[j] += x * x;
    }
  for (; i < end; ++i) {
    const float x = load_f32(p, i, D);
    acc[0] += x * x;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <DType D>
float absmax_t(const void* p, int64_t n) {
  float m = 0.0f;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float x = std::fabs(load_f32(p, i, D));
    nan |= std::isnan(x);
    m = x > m ? x : m;
  }
  return nan ? NAN : m;
}

template <DType D>
void scale_t(void* p, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) store_f32(p, i, D, load_f32(p, i, D) * s);
}

}  // namespace

FT_DEFINE_KERNEL_TABLE("scalar")

}  // namespace ft::scalar
