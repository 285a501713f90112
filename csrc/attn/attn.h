// Causal / full self-attention on CPU (fasttrain.ops.attention): forward and backward for small
// heads, one (batch, head) pair per task. Each pair's Q, K, V (T x D) are converted to fp32 tiles that
// stay in L1/L2, and the scores are computed a block of query rows at a time (S = Q K^T, softmax with
// exp2, O = P V) with register-blocked FMA micro-kernels, skipping the blocks above the causal
// diagonal. Unlike an online-softmax (flash) kernel, a block holds whole rows of scores, so the
// softmax needs no rescaling; at the sequence lengths a CPU trains (T up to a few thousand) a block of
// 64 rows x T scores is at most a few hundred KiB. All arithmetic is fp32 whatever the input dtype.
#pragma once
#include <cstdint>

#include "../common.h"

namespace ft::attn {

// A (B, H, T, D) tensor: element (b, h, t, d) at data[b * sb + h * sh + t * st + d] (d contiguous).
struct View {
  void* data;
  int64_t sb, sh, st;
};

struct Args {
  int64_t B, H, T, D;
  DType dt;          // dtype of every View (fp32, fp16 or bf16)
  float scale;       // multiplies q . k (usually 1 / sqrt(D))
  bool causal;       // key j attends to query i only if j <= i
  View q, k, v, o;   // o: written by forward, read by backward
  float* lse;        // (B * H, T) fp32, contiguous: log2 of each row's softmax denominator (in
                     // units of the log2-scaled scores); written by forward, read by backward
  View dout, dq, dk, dv;  // backward only
};

using Fn = void (*)(const Args& a, int threads);

struct Kernels {
  const char* name;
  Fn forward;
  Fn backward;
};

namespace scalar { const Kernels& table(); }
#if FT_X86
namespace avx2 { const Kernels& table(); }
namespace avx512 { const Kernels& table(); }
#endif

const Kernels& kernels();  // for the current ISA (dispatch.h)

}  // namespace ft::attn
