// Drivers of the quantized linear kernels: pick the ISA table, prepare the activations once per call
// (pad to Kp; quantize per token for int8-dynamic; per-group sums for int4), then thread over output
// channels. Everything here is O(M * K); the O(M * N * K) work is in the per-ISA files.
#include "quant_driver.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "../common.h"
#include "../dispatch.h"

namespace ft::quant {
namespace {

// int8: output channels per OpenMP work item: 4 VNNI blocks of 16, the column width of the AVX-512 tiles.
constexpr int64_t kPanelN = 4 * kBlockCols;
// Activations up to this many bytes are prepared by every thread into its own copy (a few us at most for
// batch 1-16 rows of <= 16K inputs) instead of once behind a barrier.
constexpr int64_t kPrivatePrepBytes = 64 << 10;

bool has_vnni() {
#if FT_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// Row m of x (fp32 or bf16, K wide) as fp32 into dst (Kp wide, zero padded).
// (A copy, or a bf16 widening written as a plain shift loop that the compiler vectorizes; the per-element
// load_f32 switch stayed scalar.)
void load_row(const void* x, bool bf16, int64_t m, int64_t K, int64_t Kp, float* dst) {
  if (bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(x) + m * K;
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    for (int64_t k = 0; k < K; ++k) d[k] = uint32_t(src[k]) << 16;
  } else {
    std::memcpy(dst, static_cast<const float*>(x) + m * K, size_t(K) * sizeof(float));
  }
  std::fill(dst + K, dst + Kp, 0.0f);
}

template <class F>
void over_channels(int64_t N, int threads, F&& f, int64_t per_item) {
  const int64_t blocks = (N + per_item - 1) / per_item;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) f(b * per_item, std::min(N, (b + 1) * per_item));
}

}  // namespace

const Table& table() {
  switch (current_isa()) {
#if FT_X86
    case Isa::avx512: return has_vnni() ? avx512vnni::table() : avx2::table();
    case Isa::avx2: return avx2::table();
#endif
    default: return scalar::table();
  }
}

void int8_dynamic_linear(const void* x, bool x_bf16, int64_t M, int64_t K, const int8_t* w, const float* sw,
                         const int32_t* wsum, const float* bias, float* y, int64_t N, int64_t Kp, int threads) {
  const Table& t = table();
  const bool priv = M * Kp <= kPrivatePrepBytes;
  const size_t copies = priv ? size_t(std::max(threads, 1)) : 1;
  std::vector<uint8_t> xq(copies * size_t(M * Kp));
  std::vector<float> sx(copies * size_t(M));
  const uint8_t offset = t.xq_unsigned ? 128 : 0;
  const int64_t blocks = (N + kPanelN - 1) / kPanelN;
  // One parallel region for both phases: at batch 1 a layer is ~0.1 ms of work, and on a loaded box every
  // extra fork/join is a thread wake-up that can cost more than the layer.
#pragma omp parallel num_threads(threads)
  {
    const uint8_t* xqt = xq.data();
    const float* sxt = sx.data();
    if (priv) {
      // Small batches: every thread quantizes the whole (tiny) activation into its own copy, so no barrier
      // sits between the phases and the first thread to arrive starts on the weights without waiting for
      // the others to wake (the guided schedule then hands a late thread only what is left).
      const size_t id = size_t(omp_get_thread_num());
      t.quant_rows(x, x_bf16, 0, M, K, Kp, xq.data() + id * size_t(M * Kp), sx.data() + id * size_t(M), offset);
      xqt += id * size_t(M * Kp);
      sxt += id * size_t(M);
    } else {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m) t.quant_rows(x, x_bf16, m, m + 1, K, Kp, xq.data(), sx.data(), offset);
      // (the implicit barrier of the loop above publishes xq and sx to every thread)
    }
    // Guided: large contiguous chunks first (sequential weight streams for batch 1), then smaller ones, so
    // when one thread wakes late on a shared box the other takes its remaining panels instead of waiting.
#pragma omp for schedule(guided)
    for (int64_t b = 0; b < blocks; ++b)
      t.int8_dyn(xqt, sxt, w, sw, wsum, bias, y, M, N, Kp, b * kPanelN, std::min(N, (b + 1) * kPanelN));
  }
}

void int8_weight_linear(const void* x, bool x_bf16, int64_t M, int64_t K, const int8_t* w, const float* sw,
                        const float* bias, float* y, int64_t N, int64_t Kp, int threads) {
  const Table& t = table();
  std::vector<float> xp(static_cast<size_t>(M * Kp));
  for (int64_t m = 0; m < M; ++m) load_row(x, x_bf16, m, K, Kp, xp.data() + m * Kp);
  over_channels(
      N, threads, [&](int64_t n0, int64_t n1) { t.w8(xp.data(), w, sw, bias, y, M, N, Kp, n0, n1); }, kPanelN);
}

void int4_weight_linear(const void* x, bool x_bf16, int64_t M, int64_t K, const uint8_t* w, const void* s,
                        bool s_bf16, int64_t group, const float* bias, float* y, int64_t N, int64_t Kp, int threads) {
  const Table& t = table();
  const int64_t G = Kp / group;
  // As int8_dynamic_linear: small activations (q, h, l: 4 bytes per value) are prepared by every thread.
  const bool priv = 4 * M * Kp <= kPrivatePrepBytes;
  const size_t copies = priv ? size_t(std::max(threads, 1)) : 1;
  std::vector<int16_t> q(copies * size_t(M * Kp));
  std::vector<int8_t> h(copies * size_t(M * Kp)), l(copies * size_t(M * Kp));
  std::vector<int32_t> xs(copies * size_t(M * G));
  std::vector<float> sx(copies * size_t(M));
  const int64_t blocks = (N + kPanelN - 1) / kPanelN;
#pragma omp parallel num_threads(threads)
  {
    const size_t id = priv ? size_t(omp_get_thread_num()) : 0;
    const size_t xo = id * size_t(M * Kp), go = id * size_t(M * G), mo = id * size_t(M);
    if (priv) {
      for (int64_t m = 0; m < M; ++m)
        t.prep4(x, x_bf16, m, K, Kp, group, q.data() + xo, h.data() + xo, l.data() + xo, xs.data() + go, sx.data() + mo);
    } else {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m)
        t.prep4(x, x_bf16, m, K, Kp, group, q.data(), h.data(), l.data(), xs.data(), sx.data());
    }
    const Int4Act act{q.data() + xo, h.data() + xo, l.data() + xo, xs.data() + go, sx.data() + mo};
#pragma omp for schedule(guided)
    for (int64_t b = 0; b < blocks; ++b)
      t.w4(act, w, s, s_bf16, group, bias, y, M, N, Kp, b * kPanelN, std::min(N, (b + 1) * kPanelN));
  }
}

}  // namespace ft::quant
