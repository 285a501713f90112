// Portable uint8 -> normalized float kernel (the reference path every ISA must match bit for bit).
#include "data.h"

namespace ft::data::scalar {
namespace {

void u8_normalize(const uint8_t* src, int64_t n, const float* mean, const float* std, void* out, DType dt) {
  if (dt == DType::f32) {
    float* o = static_cast<float*>(out);
    for (int64_t i = 0; i < n; ++i) o[i] = (float(src[i]) - mean[i]) / std[i];
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_f32(out, i, dt, (float(src[i]) - mean[i]) / std[i]);
}

const DataKernels kTable{"scalar", u8_normalize};

}  // namespace
const DataKernels& table() { return kTable; }
}  // namespace ft::data::scalar
