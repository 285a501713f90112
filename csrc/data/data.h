// Torch-free data-loading kernels: the counter-based sample order (a keyed Feistel permutation),
// the fused per-batch gather + decode pass and the token-window gather. Everything here works on
// raw pointers that fasttrain/ops/data.py has validated; nothing keeps state between calls, so a
// batch is a pure function of (plan, indices, seed, epoch) and independent of the thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "../common.h"

namespace ft::data {

namespace {  // internal linkage: compiled into TUs with different ISA flags (see common.h)

// splitmix64's finalizer (Steele, Lea, Flood 2014): a cheap 64-bit bijective mixer. The Python
// reference (fasttrain/ops/reference.py) implements the same arithmetic, so orders and augmentation
// draws can be checked bit for bit.
inline uint64_t mix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) { return mix64(mix64(mix64(a) ^ b) ^ c); }

}  // namespace

// Salts that separate the random streams drawn from one (seed, epoch).
constexpr uint64_t kOrderSalt = 0x5EEDull;
constexpr uint64_t kAugmentSalt = 0xA06ull;
constexpr uint64_t kWindowSalt = 0x70Cull;

// A bijection of [0, n) computed in O(1) per position: a balanced Feistel network over the smallest
// even power of two >= n, with cycle walking (Black & Rogaway 2002) to stay inside [0, n). Since the
// power of two is < 4n, the expected walk is < 4 steps.
class Permutation {
 public:
  Permutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle);
  uint64_t operator()(uint64_t position) const;

 private:
  uint64_t encrypt(uint64_t x) const;
  uint64_t n_, key_;
  int half_;
  uint64_t mask_;
  bool shuffle_;
};

// Sample index of rank-local positions [start, start + count): global position j * world + rank of
// the epoch's permutation, so ranks hold disjoint strided shards whose union is the epoch.
void sample_indices(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle, int64_t rank, int64_t world,
                    int64_t start, int64_t count, int64_t* out);

// Integer codes for widening (keep in sync with fasttrain/ops/data.py: _INT_CODES).
enum class IntCode : int { u8 = 0, i8 = 1, i16 = 2, u16 = 3, i32 = 4, u32 = 5, i64 = 6 };
enum class WideCode : int { i64 = 0, i32 = 1, f32 = 2 };

// One field of a batch: where its rows live and what to do to them on the way to the output.
struct FieldPlan {
  int kind = 0;  // 0: copy row bytes, 1: widen integers, 2: uint8 image -> normalized float
  uintptr_t base = 0;   // address of row 0 of the source
  int64_t row_stride = 0;  // bytes between consecutive rows of the source (records are interleaved in files)
  int64_t row_bytes = 0;   // bytes of one source row (copy)
  int64_t out_row_bytes = 0;  // bytes of one output row
  // widen
  int src_code = 0, dst_code = 0;
  int64_t count = 0;  // elements per row
  // image: source (H, W, C) uint8, output (out_h, out_w, C) or (C, out_h, out_w)
  int64_t H = 0, W = 0, C = 0, out_h = 0, out_w = 0, pad = 0;
  bool random_crop = false, flip = false, chw = false;
  int out_dtype = 0;  // DType code: f32 or bf16 (f16 also works)
  std::vector<float> mean, std;  // length C
  uint64_t salt = 0;  // separates the augmentation draws of different fields
};

// The crop offsets and flip of one sample: drawn from hash3(hash3(seed, epoch, kAugmentSalt), index, salt).
struct Augment {
  int64_t oy, ox;
  bool flip;
};
Augment draw_augment(const FieldPlan& p, uint64_t seed, uint64_t epoch, int64_t index);

// Fills outs[f] (one per plan, each n output rows) from the rows idx[0..n). OpenMP over samples.
void fill_batch(const std::vector<FieldPlan>& plans, const std::vector<uintptr_t>& outs, const int64_t* idx,
                int64_t n, uint64_t seed, uint64_t epoch, int threads);

// x[i] = tokens[starts[i] : starts[i] + block], y[i] = tokens[starts[i] + 1 : ... + 1], as int64.
void gather_windows(uintptr_t tokens, int src_code, const int64_t* starts, int64_t n, int64_t block, int64_t* x,
                    int64_t* y, int threads);

// Per-ISA kernel: out[i] = (float(src[i]) - mean[i]) / std[i], rounded once to `dt`. mean/std are
// the per-channel values already repeated along the row, so the kernel is a straight stream.
// Division (not a reciprocal multiply) keeps it bit-identical to torch's `(x.float() - mean) / std`.
struct DataKernels {
  const char* name;
  void (*u8_normalize)(const uint8_t* src, int64_t n, const float* mean, const float* std, void* out, DType dt);
};
namespace scalar { const DataKernels& table(); }
#if FT_X86
namespace avx2 { const DataKernels& table(); }
namespace avx512 { const DataKernels& table(); }
#endif
const DataKernels& kernels();


// The serial core of fill_batch, for callers that bring their own threads (the Producer): the
// per-field constants computed once, and per-thread scratch rows.
struct FillContext {
  explicit FillContext(std::vector<FieldPlan> plans);
  std::vector<FieldPlan> plans;
  std::vector<std::vector<float>> mean_pat, std_pat;  // mean/std repeated along a whole image
  const DataKernels* k;
};
struct FillScratch {
  explicit FillScratch(const FillContext& ctx);
  std::vector<std::vector<uint8_t>> row;
  std::vector<std::vector<float>> frow;
};
// Rows [begin, end) of fill_batch on the calling thread.
void fill_rows(const FillContext& ctx, const uintptr_t* outs, const int64_t* idx, int64_t begin, int64_t end,
               uint64_t seed, uint64_t epoch, FillScratch& scratch);
// Rows [begin, end) of gather_windows on the calling thread.
void window_rows(uintptr_t tokens, int src_code, const int64_t* starts, int64_t begin, int64_t end, int64_t block,
                 int64_t* x, int64_t* y);

}  // namespace ft::data
