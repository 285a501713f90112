// OpenMP drivers for the optimizer span kernels: each thread updates an equal contiguous share of
// the elements. Element-wise updates do not reduce anything, so the result is bitwise
// independent of the thread count.
#include "optim.h"

#include <omp.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../dispatch.h"

namespace ft::optim {
namespace {

// 64K elements = 256 KiB per array and chunk: 4 arrays stay within a Zen 4 core's 1 MiB L2 while a
// chunk is processed, and a 42M-parameter buffer still yields ~640 chunks to balance over threads.
constexpr int64_t kChunk = int64_t(1) << 16;
// Below this the OpenMP fork costs more than the pass itself.
constexpr int64_t kParallelMin = int64_t(1) << 15;

int threads_for(int64_t n, int threads) { return n < kParallelMin ? 1 : std::max(threads, 1); }

// Thread t of T takes the t-th of T equal contiguous shares of [0, n), cut at multiples of kQBlock
// elements (no 8-bit block straddles two threads), and runs it in kChunk pieces. Equal shares rather
// than kChunk chunks dealt out statically: with 64K chunks, a digits MLP's 85K parameters in six
// tensors gave one thread 97% of the work.
std::pair<int64_t, int64_t> share(int64_t n, int64_t T, int64_t t) {
  const int64_t per = ((n + T - 1) / T + kQBlock - 1) / kQBlock * kQBlock;
  const int64_t lo = std::min(n, t * per);
  return {lo, std::min(n, lo + per)};
}

template <class F>
void for_chunks(int64_t n, int threads, F&& f) {
#pragma omp parallel num_threads(threads_for(n, threads))
  {
    const auto [lo, hi] = share(n, omp_get_num_threads(), omp_get_thread_num());
    for (int64_t off = lo; off < hi; off += kChunk) f(off, std::min(kChunk, hi - off));
  }
}

}  // namespace

const OptimKernels& kernels() {
  switch (current_isa()) {
#if FT_X86
    case Isa::avx512: return avx512::table();
    case Isa::avx2: return avx2::table();
#endif
    default: return scalar::table();
  }
}

void adamw_f32(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a,
               int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) {
    k.adamw_f32(p + off, g + off, m + off, v + off, max_v ? max_v + off : nullptr, len, a);
  });
}

void adamw_f32_multi(float* const* p, const float* const* g, float* const* m, float* const* v, float* const* max_v,
                     const int64_t* n, int64_t nt, const AdamWArgs& a, int threads) {
  // The tensors as one index space [0, total), split into equal shares as in for_chunks.
  std::vector<int64_t> start(size_t(nt) + 1, 0);
  for (int64_t t = 0; t < nt; ++t) start[size_t(t) + 1] = start[size_t(t)] + n[t];
  const int64_t total = start[size_t(nt)];
  const OptimKernels& k = kernels();
#pragma omp parallel num_threads(threads_for(total, threads))
  {
    const auto [lo, hi] = share(total, omp_get_num_threads(), omp_get_thread_num());
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t a0 = std::max(lo, start[size_t(t)]) - start[size_t(t)];
      const int64_t a1 = std::min(hi, start[size_t(t) + 1]) - start[size_t(t)];
      for (int64_t off = a0; off < a1; off += kChunk)
        k.adamw_f32(p[t] + off, g[t] + off, m[t] + off, v[t] + off, max_v ? max_v[t] + off : nullptr,
                    std::min(kChunk, a1 - off), a);
    }
  }
}

void adamw_mixed(const MixedBufs& b, int64_t n, const AdamWArgs& a, int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) { k.adamw_mixed(b, off, len, a); });
}

// kChunk and the shares are multiples of kQBlock, so no 8-bit block straddles two chunks or threads.
static_assert(kChunk % kQBlock == 0, "8-bit blocks must not straddle chunks");

void adamw_int8(const Int8Bufs& b, int64_t n, const AdamWArgs& a, int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) { k.adamw_int8(b, off, len, a); });
}

void sgd_f32(float* p, const float* g, float* buf, int64_t n, const SgdArgs& a, int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) { k.sgd_f32(p + off, g + off, buf ? buf + off : nullptr, len, a); });
}

void lion_f32(float* p, const float* g, float* m, int64_t n, const LionArgs& a, int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) { k.lion_f32(p + off, g + off, m + off, len, a); });
}

void touch4r3w(float* p, const float* g, float* m, float* v, int64_t n, float c, int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) { k.touch4r3w(p + off, g + off, m + off, v + off, len, c); });
}

// The gradient chunk is computed into a per-thread scratch that stays in L1 (16 KiB) while the
// AdamW span kernel consumes it; x (B rows) is re-read from L2 for each chunk.
constexpr int64_t kLinearChunk = 4096;

void adamw_linear_f32(float* p, float* m, float* v, float* max_v, const float* x, const float* dy, int64_t B,
                      int64_t N, int64_t K, const AdamWArgs& a, int threads) {
  const OptimKernels& k = kernels();
  const int64_t n = N * K, nc = (n + kLinearChunk - 1) / kLinearChunk;
#pragma omp parallel num_threads(threads_for(n, threads))
  {
    alignas(64) float g[kLinearChunk];
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t off = c * kLinearChunk, len = std::min(kLinearChunk, n - off);
      k.linear_grad(x, dy, B, N, K, off, len, g);
      k.adamw_f32(p + off, g, m + off, v + off, max_v ? max_v + off : nullptr, len, a);
    }
  }
}

}  // namespace ft::optim
