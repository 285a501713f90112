// Weight gradient of a Linear layer, one chunk at a time, for the fused "backward + AdamW" pass
// (fasttrain.optim.AdamW(step_in_backward=True).fuse_linear_backward): the update of W reads
// G = dy^T x chunk by chunk from L1 instead of a stored (N, K) gradient, so the gradient is never
// written to memory, read back or even allocated (a fresh 64 MiB gradient costs more in page faults
// than the whole update).
//
// Element order and rounding, the same on every ISA: for flat index i = r * K + c of W (N, K),
//   acc = 0; for b in 0..B-1: acc = fma(dy[b, r], x[b, c], acc)
// so the vector paths (explicit FMA lanes) and this one (std::fma) agree bit for bit.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace ft::optim {
namespace {

// Most rows of x the fused pass accepts (fasttrain/ops/fused_linear.py checks it): it does B FMAs per
// element, so beyond a few dozen rows it stops being memory-bound and a GEMM into a stored gradient wins.
constexpr int64_t kLinearMaxRows = 64;

// Calls f(r, c0, seg, j) for each row segment of the flat span [off, off + len) of an (N, K) matrix:
// row r, columns [c0, c0 + seg), stored at g[j .. j + seg).
template <class F>
void for_row_segments(int64_t K, int64_t off, int64_t len, F&& f) {
  for (int64_t j = 0; j < len;) {
    const int64_t idx = off + j, r = idx / K, c0 = idx % K, seg = std::min(K - c0, len - j);
    f(r, c0, seg, j);
    j += seg;
  }
}

// g[0, len) = (dy^T x) flattened, elements [off, off + len). x: (B, K), dy: (B, N), both row-major fp32.
[[maybe_unused]] void linear_grad_portable(const float* x, const float* dy, int64_t B, int64_t N, int64_t K,
                                           int64_t off, int64_t len, float* g) {
  float d[kLinearMaxRows];
  for_row_segments(K, off, len, [&](int64_t r, int64_t c0, int64_t seg, int64_t j) {
    for (int64_t b = 0; b < B; ++b) d[b] = dy[b * N + r];
    for (int64_t c = 0; c < seg; ++c) {
      float acc = 0.0f;
      for (int64_t b = 0; b < B; ++b) acc = std::fma(d[b], x[b * K + c0 + c], acc);
      g[j + c] = acc;
    }
  });
}

}  // namespace
}  // namespace ft::optim
