// Entry points of the quantized linear kernels (called by bind.cpp with validated pointers).
// x: (M, K) fp32 or bf16; y: (M, N) fp32; weights in the layouts described in quant.h.
#pragma once
#include <cstdint>

#include "quant.h"

namespace ft::quant {

const Table& table();  // the kernels the current ISA selection runs (avx512 -> avx512vnni if the CPU has VNNI)

void int8_dynamic_linear(const void* x, bool x_bf16, int64_t M, int64_t K, const int8_t* w, const float* sw,
                         const int32_t* wsum, const float* bias, float* y, int64_t N, int64_t Kp, int threads);
void int8_weight_linear(const void* x, bool x_bf16, int64_t M, int64_t K, const int8_t* w, const float* sw,
                        const float* bias, float* y, int64_t N, int64_t Kp, int threads);
void int4_weight_linear(const void* x, bool x_bf16, int64_t M, int64_t K, const uint8_t* w, const void* s,
                        bool s_bf16, int64_t group, const float* bias, float* y, int64_t N, int64_t Kp, int threads);

}  // namespace ft::quant
