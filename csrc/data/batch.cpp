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

// Per-thread scratch for one image: a source row with crop/pad/flip applied, and an fp32 row for
// the channels-first scatter.
struct Scratch {
  std::vector<uint8_t> row;
  std::vector<float> frow;
};

void image(const FieldPlan& p, const DataKernels& k, const float* mean_pat, const float* std_pat, const uint8_t* src,
           char* out, const Augment& a, Scratch& s) {
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
      std::fill(s.row.begin(), s.row.begin() + rowlen, uint8_t(0));
      row = s.row.data();
    } else if (!a.flip && a.ox - p.pad >= 0 && a.ox - p.pad + p.out_w <= p.W) {
      row = src + (sy * p.W + a.ox - p.pad) * C;  // in bounds, not flipped: read in place
    } else {
      const uint8_t* srow = src + sy * p.W * C;
      for (int64_t x = 0; x < p.out_w; ++x) {
        const int64_t sx = a.ox + (a.flip ? p.out_w - 1 - x : x) - p.pad;
        if (sx < 0 || sx >= p.W) std::memset(&s.row[x * C], 0, size_t(C));
        else std::memcpy(&s.row[x * C], srow + sx * C, size_t(C));
      }
      row = s.row.data();
    }
    if (!p.chw) {
      k.u8_normalize(row, rowlen, mean_pat, std_pat, out + y * rowlen * es, dt);
    } else {
      // Normalize in fp32, then scatter channels; store_f32 rounds exactly as the kernels do.
      k.u8_normalize(row, rowlen, mean_pat, std_pat, s.frow.data(), DType::f32);
      const int64_t plane = p.out_h * p.out_w;
      for (int64_t x = 0; x < p.out_w; ++x)
        for (int64_t c = 0; c < C; ++c) store_f32(out, c * plane + y * p.out_w + x, dt, s.frow[x * C + c]);
    }
  }
}

}  // namespace

const DataKernels& kernels() { return kernels_for(current_isa()); }

void fill_batch(const std::vector<FieldPlan>& plans, const std::vector<uintptr_t>& outs, const int64_t* idx,
                int64_t n, uint64_t seed, uint64_t epoch, int threads) {
  const DataKernels& k = kernels();
  // mean/std repeated along the longest stream an image kernel call sees (a whole image or a row).
  std::vector<std::vector<float>> mean_pat(plans.size()), std_pat(plans.size());
  for (size_t f = 0; f < plans.size(); ++f) {
    const FieldPlan& p = plans[f];
    if (p.kind != 2) continue;
    const int64_t len = p.H * p.W * p.C;
    mean_pat[f].resize(size_t(len));
    std_pat[f].resize(size_t(len));
    for (int64_t i = 0; i < len; ++i) {
      mean_pat[f][i] = p.mean[i % p.C];
      std_pat[f][i] = p.std[i % p.C];
    }
  }
  // Samples are independent (their random draws are keyed by sample index), so any split over
  // threads gives the same bytes.
#pragma omp parallel num_threads(std::max(1, std::min<int>(threads, int(std::max<int64_t>(n, 1)))))
  {
    std::vector<Scratch> scratch(plans.size());
    for (size_t f = 0; f < plans.size(); ++f)
      if (plans[f].kind == 2) {
        scratch[f].row.resize(size_t(plans[f].out_w * plans[f].C));
        scratch[f].frow.resize(size_t(plans[f].out_w * plans[f].C));
      }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (size_t f = 0; f < plans.size(); ++f) {
        const FieldPlan& p = plans[f];
        const uint8_t* src = reinterpret_cast<const uint8_t*>(p.base) + idx[i] * p.row_stride;
        char* out = reinterpret_cast<char*>(outs[f]) + i * p.out_row_bytes;
        if (p.kind == 0) std::memcpy(out, src, size_t(p.row_bytes));
        else if (p.kind == 1) widen(p.src_code, p.dst_code, src, out, p.count);
        else image(p, k, mean_pat[f].data(), std_pat[f].data(), src, out, draw_augment(p, seed, epoch, idx[i]), scratch[f]);
      }
    }
  }
}

void gather_windows(uintptr_t tokens, int src_code, const int64_t* starts, int64_t n, int64_t block, int64_t* x,
                    int64_t* y, int threads) {
  const int64_t es = src_code == int(IntCode::u16) || src_code == int(IntCode::i16) ? 2
                     : src_code == int(IntCode::i64)                                 ? 8
                     : src_code == int(IntCode::u8) || src_code == int(IntCode::i8)  ? 1
                                                                                       : 4;
  const char* base = reinterpret_cast<const char*>(tokens);
#pragma omp parallel for num_threads(std::max(1, threads)) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const char* s = base + starts[i] * es;
    widen(src_code, int(WideCode::i64), s, x + i * block, block);
    widen(src_code, int(WideCode::i64), s + es, y + i * block, block);
  }
}

}  // namespace ft::data
