// Shared, torch-free definitions for the fasttrain C++ core: dtype codes, scalar fp16/bf16
// conversions (round-to-nearest-even, NaN-preserving) and the per-ISA kernel table.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ft {

// Dtype codes shared with fasttrain/ops/_lib.py. Keep the two in sync.
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// Internal linkage (anonymous namespace) for the helpers below: this header is compiled into
// translation units built with different ISA flags, and shared `inline` definitions would be merged
// by the linker into one copy, so the scalar path could run an AVX-512-compiled body (SIGILL on CPUs
// without it).
namespace {

// Calls f(std::integral_constant<DType, D>{}) for the runtime dtype, so each ISA file writes its
// kernels once as templates over D and dispatches in one line.
template <class F>
inline decltype(auto) with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f(std::integral_constant<DType, DType::f32>{});
    case DType::f16: return f(std::integral_constant<DType, DType::f16>{});
    default: return f(std::integral_constant<DType, DType::bf16>{});
  }
}

inline int64_t elem_size(DType dt) { return dt == DType::f32 ? 4 : 2; }

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }

// Round-to-nearest-even; NaNs stay (quiet) NaNs instead of rounding into Inf.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24 is exact in fp32
    const float v = float(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round-to-nearest-even, overflow to Inf, NaN preserved, subnormals exact.
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf
  if (u < 0x38800000u) {                        // below 2^-14: fp16 subnormal or zero
    const int shift = 126 - int(u >> 23);       // result = round(m * 2^-shift)
    if (shift >= 25) return sign;
    const uint32_t m = (u & 0x7fffffu) | 0x800000u;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t r = (u - 0x38000000u) >> 13;  // rebias exponent 127 -> 15
  const uint32_t rem = u & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return uint16_t(sign | r);
}

inline float load_f32(const void* p, int64_t i, DType dt) {
  switch (dt) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}

inline void store_f32(void* p, int64_t i, DType dt, float v) {
  switch (dt) {
    case DType::f32: static_cast<float*>(p)[i] = v; break;
    case DType::f16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    default: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
  }
}

}  // namespace

// One set of single-threaded streaming kernels per ISA. Each works on one contiguous span of
// `n` elements; the multi-tensor driver (multi_tensor.cpp) splits work and threads.
// fp32 partial sums are flushed to fp64 every kSumBlock elements: each fp32 lane then adds at most
// kSumBlock / lanes terms, which keeps the norm's relative error near 1e-7 for any tensor size, at
// the cost of one horizontal add per block.
constexpr int64_t kSumBlock = 4096;

struct KernelTable {
  const char* name;
  // sum of x^2: fp32 lanes within blocks of kSumBlock elements, fp64 across blocks.
  double (*sumsq)(const void* p, int64_t n, DType dt);
  // max |x|; NaN if any element is NaN (as torch's inf-norm).
  float (*absmax)(const void* p, int64_t n, DType dt);
  // x *= s in place, rounding back to the storage dtype (RNE).
  void (*scale)(void* p, int64_t n, DType dt, float s);
};

// Defines `const KernelTable& table()` for one ISA from the three templates its file provides:
//   float sumsq_block<D>(p, i, end)   sum of x^2 over elements [i, end), fp32 lanes
//   float absmax_t<D>(p, n)           max |x|, NaN if any NaN
//   void  scale_t<D>(p, n, s)         x *= s, rounded back to D
// The dtype switch and the fp64 flush every kSumBlock elements live here, once for all ISAs.
#define FT_DEFINE_KERNEL_TABLE(ISA_NAME)                                                          \
  const KernelTable& table() {                                                                     \
    static const KernelTable t{                                                                    \
        ISA_NAME,                                                                                  \
        [](const void* p, int64_t n, DType dt) {                                                   \
          return with_dtype(dt, [&](auto d) {                                                      \
            double total = 0.0;                                                                    \
            for (int64_t b = 0; b < n; b += kSumBlock)                                             \
              total += sumsq_block<decltype(d)::value>(p, b, std::min(n, b + kSumBlock));          \
            return total;                                                                          \
          });                                                                                      \
        },                                                                                         \
        [](const void* p, int64_t n, DType dt) {                                                   \
          return with_dtype(dt, [&](auto d) { return absmax_t<decltype(d)::value>(p, n); });       \
        },                                                                                         \
        [](void* p, int64_t n, DType dt, float s) {                                                \
          with_dtype(dt, [&](auto d) { scale_t<decltype(d)::value>(p, n, s); });                   \
        }};                                                                                        \
    return t;                                                                                      \
  }

namespace scalar { const KernelTable& table(); }
#if FT_X86
namespace avx2 { const KernelTable& table(); }
namespace avx512 { const KernelTable& table(); }
#endif

}  // namespace ft
