#include "multi_tensor.h"

#include <omp.h>

#include <cmath>
#include <limits>

#include "dispatch.h"

namespace ft {
namespace {

// 64K elements: 256 KiB of fp32, a few L2-sized pieces per thread for any realistic model, and
// small enough that the fp32 partial sum inside one chunk stays accurate.
constexpr int64_t kChunk = int64_t(1) << 16;
// Below this many elements the OpenMP fork costs more than it saves.
constexpr int64_t kParallelMin = int64_t(1) << 15;

struct Chunk {
  char* ptr;
  int64_t n;
  DType dtype;
};

std::vector<Chunk> make_chunks(const std::vector<TensorRef>& ts, int64_t* total) {
  std::vector<Chunk> out;
  *total = 0;
  for (const auto& t : ts) {
    const int64_t es = elem_size(t.dtype);
    for (int64_t off = 0; off < t.numel; off += kChunk)
      out.push_back({static_cast<char*>(t.ptr) + off * es, std::min(kChunk, t.numel - off), t.dtype});
    *total += t.numel;
  }
  return out;
}

int threads_for(int64_t total, int threads) { return total < kParallelMin ? 1 : std::max(threads, 1); }

}  // namespace

float multi_tensor_norm(const std::vector<TensorRef>& ts, double norm_type, int threads) {
  int64_t total = 0;
  const std::vector<Chunk> chunks = make_chunks(ts, &total);
  const int64_t nc = int64_t(chunks.size());
  std::vector<double> partial(chunks.size());
  const KernelTable& k = kernels();
  const bool inf_norm = std::isinf(norm_type);
#pragma omp parallel for num_threads(threads_for(total, threads)) schedule(static)
  for (int64_t c = 0; c < nc; ++c)
    partial[c] = inf_norm ? k.absmax(chunks[c].ptr, chunks[c].n, chunks[c].dtype)
                          : k.sumsq(chunks[c].ptr, chunks[c].n, chunks[c].dtype);
  if (inf_norm) {
    double m = 0.0;
    for (double p : partial) {
      if (std::isnan(p)) return float(p);
      m = std::max(m, p);
    }
    return float(m);
  }
  double s = 0.0;  // fixed-order reduction: the result does not depend on the thread count
  for (double p : partial) s += p;
  return float(std::sqrt(s));
}

void multi_tensor_scale(const std::vector<TensorRef>& ts, float scale, int threads) {
  int64_t total = 0;
  const std::vector<Chunk> chunks = make_chunks(ts, &total);
  const int64_t nc = int64_t(chunks.size());
  const KernelTable& k = kernels();
  // Walk the chunks backwards: right after a norm pass the last-read chunks are still in the
  // last-level cache (32 MiB on this box), so the scale pass starts with cache hits instead of
  // evicting them first. Each thread's static block is reversed alike.
#pragma omp parallel for num_threads(threads_for(total, threads)) schedule(static)
  for (int64_t r = 0; r < nc; ++r) {
    const Chunk& ch = chunks[nc - 1 - r];
    k.scale(ch.ptr, ch.n, ch.dtype, scale);
  }
}

float clip_by_total_norm(const std::vector<TensorRef>& ts, double max_norm, double norm_type,
                         bool skip_if_nonfinite, int threads) {
  const float norm = multi_tensor_norm(ts, norm_type, threads);
  if (!std::isfinite(norm) && skip_if_nonfinite) return norm;
  // Same arithmetic as torch: fp32 coef = max_norm / (norm + 1e-6), clamp(max=1).
  const float coef = float(max_norm) / (norm + 1e-6f);
  if (coef >= 1.0f) return norm;  // clamps to 1: grads unchanged (a NaN coef falls through, as in torch)
  multi_tensor_scale(ts, coef, threads);
  return norm;
}

}  // namespace ft
