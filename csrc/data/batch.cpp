// The sample order, the fused per-batch pass and the token-window gather (see data.h).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "../dispatch.h"
#include "data.h"

namespace ft::data {

// ---------------------------------------------------------------------------------------------
// Order

Permutation::Permutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle)
    : n_(n), key_(hash3(seed, epoch, kOrderSalt)), half_(1), mask_(1), shuffle_(shuffle) {
  int bits = 2;
  while (bits < 64 && (uint64_t(1) << bits) < n) ++bits;
  if (bits & 1) ++bits;  // balanced halves
  half_ = bits / 2;
  mask_ = (uint64_t(1) << half_) - 1;
}

uint64_t Permutation::encrypt(uint64_t x) const {
  uint64_t l = x >> half_, r = x & mask_;
  for (uint64_t round = 0; round < 6; ++round) {  // 6 rounds: well mixed for shuffling, not crypto
    const uint64_t f = hash3(key_, round, r) & mask_;
    const uint64_t t = l ^ f;
    l = r;
    r = t;
  }
  return (l << half_) | r;
}

uint64_t Permutation::operator()(uint64_t position) const {
  if (!shuffle_) return position;
  uint64_t x = encrypt(position);
  while (x >= n_) x = encrypt(x);  // cycle walking: stays a bijection of [0, n)
  return x;
}

void sample_indices(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle, int64_t rank, int64_t world,
                    int64_t start, int64_t count, int64_t* out) {
  const Permutation perm(n, seed, epoch, shuffle);
  for (int64_t j = 0; j < count; ++j) out[j] = int64_t(perm(uint64_t((start + j) * world + rank)));
}

// ---------------------------------------------------------------------------------------------
// Fused batch pass

Augment draw_augment(const FieldPlan& p, uint64_t seed, uint64_t epoch, int64_t index) {
  Augment a{0, 0, false};
  const uint64_t r = hash3(hash3(seed, epoch, kAugmentSalt), uint64_t(index), p.salt);
  if (p.random_crop) {
    a.oy = int64_t((r & 0x1fffff) % uint64_t(p.H + 2 * p.pad - p.out_h + 1));
    a.ox = int64_t(((r >> 21) & 0x1fffff) % uint64_t(p.W + 2 * p.pad - p.out_w + 1));
  }
  a.flip = p.flip && ((r >> 63) & 1);
  return a;
}

namespace {

const DataKernels& kernels_for(Isa isa) {
  switch (isa) {
#if FT_X86
    case Isa::avx512: return avx512::table();
    case Isa::avx2: return avx2::table();
#endif
    default: return scalar::table();
  }
}

template <class S, class D>
void widen_row(const void* src, void* dst, int64_t n) {
  const S* s = static_cast<const S*>(src);
  D* d = static_cast<D*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = D(s[i]);
}

template <class D>
void widen_to(int src_code, const void* src, void* dst, int64_t n) {
  switch (IntCode(src_code)) {
    case IntCode::u8: return widen_row<uint8_t, D>(src, dst, n);
    case IntCode::i8: return widen_row<int8_t, D>(src, dst, n);
    case IntCode::i16: return widen_row<int16_t, D>(src, dst, n);
    case IntCode::u16: return widen_row<uint16_t, D>(src, dst, n);
    case IntCode::i32: return widen_row<int32_t, D>(src, dst, n);
    case IntCode::u32: return widen_row<uint32_t, D>(src, dst, n);
    default: return widen_row<int64_t, D>(src, dst, n);
  }
}

void widen(int src_code, int dst_code, const void* src, void* dst, int64_t n) {
  switch (WideCode(dst_code)) {
    case WideCode::i64: return widen_to<int64_t>(src_code, src, dst, n);
    case WideCode::i32: return widen_to<int32_t>(src_code, src, dst, n);
    default: return widen_to<float>(src_code, src, dst, n);
  }
}

// `row`: scratch for one source row with crop/pad/flip applied; `frow`: an fp32 row for the
// channels-first scatter.
void image(const FieldPlan& p, const DataKernels& k, const float* mean_pat, const float* std_pat, const uint8_t* src,
           char* out, const Augment& a, std::vector<uint8_t>& srow_buf, std::vector<float>& frow) {
  const DType dt = DType(p.out_dtype);
  const int64_t es = elem_size(dt), C = p.C, rowlen = p.out_w * C;
  const bool plain = !p.random_crop && !a.flip && p.pad == 0 && p.out_h == p.H && p.out_w == p.W;
  if (plain && !p.chw) {  // the common case: the whole image is one contiguous stream
    k.u8_normalize(src, p.H * p.W * C, mean_pat, std_pat, out, dt);
    return;
  }
  for (int64_t y = 0; y < p.out_h; ++y) {
    const int64_t sy = a.oy + y - p.pad;
    const uint8_t* row;
    if (sy < 0 || sy >= p.H) {  // padding rows are zeros, normalized like any pixel
      std::fill(srow_buf.begin(), srow_buf.begin() + rowlen, uint8_t(0));
      row = srow_buf.data();
    } else if (!a.flip && a.ox - p.pad >= 0 && a.ox - p.pad + p.out_w <= p.W) {
      row = src + (sy * p.W + a.ox - p.pad) * C;  // in bounds, not flipped: read in place
    } else {
      const uint8_t* srow = src + sy * p.W * C;
      for (int64_t x = 0; x < p.out_w; ++x) {
        const int64_t sx = a.ox + (a.flip ? p.out_w - 1 - x : x) - p.pad;
        if (sx < 0 || sx >= p.W) std::memset(&srow_buf[x * C], 0, size_t(C));
        else std::memcpy(&srow_buf[x * C], srow + sx * C, size_t(C));
      }
      row = srow_buf.data();
    }
    if (!p.chw) {
      k.u8_normalize(row, rowlen, mean_pat, std_pat, out + y * rowlen * es, dt);
    } else {
      // Normalize in fp32, then scatter channels; store_f32 rounds exactly as the kernels do.
      k.u8_normalize(row, rowlen, mean_pat, std_pat, frow.data(), DType::f32);
      const int64_t plane = p.out_h * p.out_w;
      for (int64_t x = 0; x < p.out_w; ++x)
        for (int64_t c = 0; c < C; ++c) store_f32(out, c * plane + y * p.out_w + x, dt, frow[x * C + c]);
    }
  }
}

}  // namespace

const DataKernels& kernels() { return kernels_for(current_isa()); }

FillContext::FillContext(std::vector<FieldPlan> plans_)
    : plans(std::move(plans_)), mean_pat(plans.size()), std_pat(plans.size()), k(&kernels()) {
  // mean/std repeated along the longest stream an image kernel call sees (a whole image or a row).
  for (size_t f = 0; f < plans.size(); ++f) {
    const FieldPlan& p = plans[f];
    if (p.kind != 2) continue;
    const int64_t len = std::max(p.H * p.W, p.out_w) * p.C;  // a padded crop row can be wider than the image
    mean_pat[f].resize(size_t(len));
    std_pat[f].resize(size_t(len));
    for (int64_t i = 0; i < len; ++i) {
      mean_pat[f][i] = p.mean[i % p.C];
      std_pat[f][i] = p.std[i % p.C];
    }
  }
}

FillScratch::FillScratch(const FillContext& ctx) : row(ctx.plans.size()), frow(ctx.plans.size()) {
  for (size_t f = 0; f < ctx.plans.size(); ++f)
    if (ctx.plans[f].kind == 2) {
      row[f].resize(size_t(ctx.plans[f].out_w * ctx.plans[f].C));
      frow[f].resize(size_t(ctx.plans[f].out_w * ctx.plans[f].C));
    }
}

constexpr int64_t kPrefetchAhead = 2;

void fill_rows(const FillContext& ctx, const uintptr_t* outs, const int64_t* idx, int64_t begin, int64_t end,
               uint64_t seed, uint64_t epoch, FillScratch& scratch) {
  const std::vector<FieldPlan>& plans = ctx.plans;
  for (int64_t i = begin; i < end; ++i) {
    // Random rows of a large source: each one starts with a TLB miss and a DRAM round trip (the
    // page-table entries of a 600 MB array do not stay cached while the model runs), which the
    // hardware prefetcher cannot foresee. Touch the row kPrefetchAhead samples on now, so its page
    // walk and first lines overlap this sample's work.
    if (i + kPrefetchAhead < end) {
      for (const FieldPlan& p : plans) {
        const char* nxt = reinterpret_cast<const char*>(p.base) + idx[i + kPrefetchAhead] * p.row_stride;
        for (int64_t o = 0; o < p.row_bytes; o += 64) __builtin_prefetch(nxt + o, 0, 0);
      }
    }
    for (size_t f = 0; f < plans.size(); ++f) {
      const FieldPlan& p = plans[f];
      const uint8_t* src = reinterpret_cast<const uint8_t*>(p.base) + idx[i] * p.row_stride;
      char* out = reinterpret_cast<char*>(outs[f]) + i * p.out_row_bytes;
      if (p.kind == 0) std::memcpy(out, src, size_t(p.row_bytes));
      else if (p.kind == 1) widen(p.src_code, p.dst_code, src, out, p.count);
      else
        image(p, *ctx.k, ctx.mean_pat[f].data(), ctx.std_pat[f].data(), src, out, draw_augment(p, seed, epoch, idx[i]),
              scratch.row[f], scratch.frow[f]);
    }
  }
}

void fill_batch(const std::vector<FieldPlan>& plans, const std::vector<uintptr_t>& outs, const int64_t* idx,
                int64_t n, uint64_t seed, uint64_t epoch, int threads) {
  const FillContext ctx(plans);
  // Samples are independent (their random draws are keyed by sample index), so any split over
  // threads gives the same bytes.
#pragma omp parallel num_threads(std::max(1, std::min<int>(threads, int(std::max<int64_t>(n, 1)))))
  {
    FillScratch scratch(ctx);
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    // The static split of `omp for schedule(static)`, written out so fill_rows runs on ranges.
    const int64_t chunk = n / nt, extra = n % nt;
    const int64_t begin = t * chunk + std::min<int64_t>(t, extra);
    fill_rows(ctx, outs.data(), idx, begin, begin + chunk + (t < extra ? 1 : 0), seed, epoch, scratch);
  }
}

namespace {
int64_t token_bytes(int src_code) {
  switch (IntCode(src_code)) {
    case IntCode::u8: case IntCode::i8: return 1;
    case IntCode::u16: case IntCode::i16: return 2;
    case IntCode::i64: return 8;
    default: return 4;
  }
}
}  // namespace

void window_rows(uintptr_t tokens, int src_code, const int64_t* starts, int64_t begin, int64_t end, int64_t block,
                 int64_t* x, int64_t* y) {
  const int64_t es = token_bytes(src_code);
  const char* base = reinterpret_cast<const char*>(tokens);
  for (int64_t i = begin; i < end; ++i) {
    const char* s = base + starts[i] * es;
    widen(src_code, int(WideCode::i64), s, x + i * block, block);
    widen(src_code, int(WideCode::i64), s + es, y + i * block, block);
  }
}

void gather_windows(uintptr_t tokens, int src_code, const int64_t* starts, int64_t n, int64_t block, int64_t* x,
                    int64_t* y, int threads) {
#pragma omp parallel for num_threads(std::max(1, threads)) schedule(static)
  for (int64_t i = 0; i < n; ++i) window_rows(tokens, src_code, starts, i, i + 1, block, x, y);
}

}  // namespace ft::data
