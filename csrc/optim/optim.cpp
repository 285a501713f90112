// OpenMP drivers for the optimizer span kernels: split one flat buffer into fixed chunks and run
// them on a static schedule. Element-wise updates do not reduce anything, so the result is bitwise
// independent of the thread count.
#include "optim.h"

#include <omp.h>

#include <algorithm>
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

template <class F>
void for_chunks(int64_t n, int threads, F&& f) {
  const int64_t nc = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads_for(n, threads)) schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    const int64_t off = c * kChunk;
    f(off, std::min(kChunk, n - off));
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
  struct Piece {
    int64_t t, off, len;
  };
  std::vector<Piece> pieces;
  int64_t total = 0;
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t off = 0; off < n[t]; off += kChunk) pieces.push_back({t, off, std::min(kChunk, n[t] - off)});
    total += n[t];
  }
  const OptimKernels& k = kernels();
  const int64_t np = int64_t(pieces.size());
#pragma omp parallel for num_threads(threads_for(total, threads)) schedule(static)
  for (int64_t i = 0; i < np; ++i) {
    const Piece& c = pieces[size_t(i)];
    k.adamw_f32(p[c.t] + c.off, g[c.t] + c.off, m[c.t] + c.off, v[c.t] + c.off, max_v ? max_v[c.t] + c.off : nullptr,
                c.len, a);
  }
}

void adamw_mixed(const MixedBufs& b, int64_t n, const AdamWArgs& a, int threads) {
  const OptimKernels& k = kernels();
  for_chunks(n, threads, [&](int64_t off, int64_t len) { k.adamw_mixed(b, off, len, a); });
}

// kChunk is a multiple of kQBlock, so no 8-bit block straddles two chunks (or two threads).
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
