// Multi-tensor drivers: split a list of tensors into fixed-size chunks, run the ISA kernels over
// the chunks with OpenMP, and reduce chunk results in a fixed order, so the result does not depend
// on the number of threads.
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"

namespace ft {

struct TensorRef {
  void* ptr;
  int64_t numel;
  DType dtype;
};

// Global norm over all elements of all tensors: fp32 accumulation in short blocks, fp64 above that.
// norm_type: 2 or +inf. NaN/Inf propagate as in torch.linalg.vector_norm.
float multi_tensor_norm(const std::vector<TensorRef>& ts, double norm_type, int threads);

// x *= scale for every element of every tensor (result rounded to each tensor's dtype).
void multi_tensor_scale(const std::vector<TensorRef>& ts, float scale, int threads);

// torch.nn.utils.clip_grad_norm_ semantics: coef = max_norm / (norm + 1e-6), clamped to 1.
// Grads are rewritten only when coef < 1 or the norm is not finite (then coef is 0 or NaN, as in torch),
// which saves the write pass whenever no clipping happens. If skip_if_nonfinite is set, a non-finite
// norm leaves the tensors untouched (the caller raises). Returns the norm.
float clip_by_total_norm(const std::vector<TensorRef>& ts, double max_norm, double norm_type,
                         bool skip_if_nonfinite, int threads);

}  // namespace ft
