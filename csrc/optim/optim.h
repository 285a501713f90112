// Fused optimizer kernels: one pass over flat, contiguous buffers (param, grad, states) per step.
// Torch-free: raw pointers, element counts and scalar hyperparameters that fasttrain/ops/optim.py
// has already validated. Each ISA file (optim_{scalar,avx2,avx512}.cpp) implements the span
// kernels once; optim.cpp splits the buffers into chunks and threads them with OpenMP.
#pragma once
#include <cstdint>

#include "../common.h"

namespace ft::optim {

// AdamW hyperparameters for one step, precomputed on the host in fp64 and rounded to fp32 the way
// torch.optim.AdamW(foreach=False) rounds its Python scalars, so the per-element arithmetic below
// can follow torch's order of operations exactly.
struct AdamWArgs {
  float decay;        // 1 - lr * weight_decay   (param.mul_(decay))
  float one_minus_b1; // 1 - beta1                (exp_avg.lerp_(grad, 1 - beta1))
  float beta2;        //                          (exp_avg_sq.mul_(beta2)...)
  float one_minus_b2; // 1 - beta2                (...addcmul_(grad, grad, value=1 - beta2))
  float bc2_sqrt;     // sqrt(1 - beta2^step)
  float eps;
  float neg_step_size;  // -lr / (1 - beta1^step)
  bool maximize;
  bool amsgrad;
  float grad_mul;   // gradients are multiplied by this first: 1/loss-scale (GradScaler) times the clip coefficient
  bool stochastic;  // round the low-precision param stochastically (bf16 params without masters)
  uint32_t seed;    // per step; the rounding noise of element i is hash(seed, i), whatever the threads
};

// SGD (torch.optim.SGD, foreach=False order of operations). buf may be null iff momentum == 0.
struct SgdArgs {
  float lr, momentum, one_minus_dampening, weight_decay;
  bool nesterov, maximize;
  bool first;  // the momentum buffer is not initialised yet: buf = grad (torch clones it)
};

// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
//   p *= 1 - lr * wd;  p -= lr * sign(beta1 * m + (1 - beta1) * g);  m = beta2 * m + (1 - beta2) * g
struct LionArgs {
  float lr, decay, beta1, one_minus_b1, beta2, one_minus_b2;
  bool maximize;
};

// Buffers of one mixed-precision AdamW pass. param and grad share `pdt` (f32 / f16 / bf16); exp_avg,
// exp_avg_sq and max_exp_avg_sq share `sdt` (f32 / bf16). `master` (fp32) is null unless the
// optimizer keeps master weights: then the update reads and writes the master and writes the
// param rounded from it in the same pass.
struct MixedBufs {
  void* p;
  const void* g;
  void* m;
  void* v;
  void* max_v;
  float* master;
  DType pdt;
  DType sdt;
};

// Buffers of one blockwise 8-bit AdamW pass (fp32 params; see optim_int8.h for the code maps).
// Element i's states are codes m[i], v[i]; block i / kQBlock's scales m_scale[.], v_scale[.].
constexpr int64_t kQBlock = 256;
struct Int8Bufs {
  float* p;
  const float* g;
  int8_t* m;
  uint8_t* v;
  float* m_scale;
  float* v_scale;
};

// Span kernels of one ISA. All pointers cover the same n elements; max_v may be null unless amsgrad.
struct OptimKernels {
  const char* name;
  void (*adamw_f32)(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a);
  // Elements [off, off + n) of the buffers in b (off also indexes the stochastic-rounding stream).
  void (*adamw_mixed)(const MixedBufs& b, int64_t off, int64_t n, const AdamWArgs& a);
  void (*sgd_f32)(float* p, const float* g, float* buf, int64_t n, const SgdArgs& a);
  void (*lion_f32)(float* p, const float* g, float* m, int64_t n, const LionArgs& a);
  // Elements [off, off + n) of the buffers in b, off a multiple of kQBlock (whole blocks but the last).
  void (*adamw_int8)(const Int8Bufs& b, int64_t off, int64_t n, const AdamWArgs& a);
  // Memory roofline for the AdamW pass: reads p, g, m, v and writes p, m, v (in place) with no math,
  // so a benchmark can time "the same bytes" next to the real kernel.
  void (*touch4r3w)(float* p, const float* g, float* m, float* v, int64_t n, float c);
  // g[0, len) = elements [off, off + len) of the flattened (N, K) weight gradient dy^T x of a Linear
  // layer (x: (B, K), dy: (B, N), B <= kLinearMaxRows); order of operations in optim_linear.h.
  void (*linear_grad)(const float* x, const float* dy, int64_t B, int64_t N, int64_t K, int64_t off, int64_t len,
                      float* g);
};

namespace scalar { const OptimKernels& table(); }
#if FT_X86
namespace avx2 { const OptimKernels& table(); }
namespace avx512 { const OptimKernels& table(); }
#endif

// The table for ft::current_isa().
const OptimKernels& kernels();

// Multi-threaded drivers over one flat buffer each (chunks of kChunk elements, static schedule).
void adamw_f32(float* p, const float* g, float* m, float* v, float* max_v, int64_t n, const AdamWArgs& a,
               int threads);
void adamw_mixed(const MixedBufs& b, int64_t n, const AdamWArgs& a, int threads);
void adamw_int8(const Int8Bufs& b, int64_t n, const AdamWArgs& a, int threads);
void sgd_f32(float* p, const float* g, float* buf, int64_t n, const SgdArgs& a, int threads);
void lion_f32(float* p, const float* g, float* m, int64_t n, const LionArgs& a, int threads);
void touch4r3w(float* p, const float* g, float* m, float* v, int64_t n, float c, int threads);
// AdamW over a list of nt separate fp32 tensors (multi-tensor apply): tensor t has n[t] elements at
// p[t], g[t], m[t], v[t] (max_v[t] with amsgrad, else max_v may be null). Every tensor is cut into
// kChunk pieces and the pieces of all tensors share one static schedule, so a model's many small
// tensors and its few large ones balance over the threads alike.
void adamw_f32_multi(float* const* p, const float* const* g, float* const* m, float* const* v, float* const* max_v,
                     const int64_t* n, int64_t nt, const AdamWArgs& a, int threads);
// AdamW on a Linear weight p (N, K) fp32 whose gradient dy^T x is computed chunk by chunk inside the
// pass (never stored); m, v (, max_v) fp32 like p. x: (B, K), dy: (B, N).
void adamw_linear_f32(float* p, float* m, float* v, float* max_v, const float* x, const float* dy, int64_t B,
                      int64_t N, int64_t K, const AdamWArgs& a, int threads);

}  // namespace ft::optim
