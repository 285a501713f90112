"""fasttrain.ops: the only place where tensors meet the compiled core.

Every op here validates its inputs (dtype, device, shape, contiguity, aliasing), is registered with
`torch.library.custom_op` + `register_fake` so torch.compile can trace it, and has a pure-torch
reference in `fasttrain.ops.reference`. `REGISTRY` lists them all.
"""

from fasttrain.ops import reference
from fasttrain.ops._registry import REGISTRY, OpSpec
from fasttrain.ops.attention import attention
from fasttrain.ops.data import gather_normalize
from fasttrain.ops.fused_linear import adamw_linear_step_
from fasttrain.ops.grad_norm import clip_grad_norm_, get_total_norm
from fasttrain.ops.optim import adamw_int8_step_, adamw_multi_step_, adamw_step_, lion_step_, sgd_step_
from fasttrain.ops.quant import (
    int4_weight_linear,
    int8_dynamic_linear,
    int8_weight_linear,
    quantize_int4_weight,
    quantize_int8_weight,
)

__all__ = [
    "REGISTRY", "OpSpec", "reference",
    "get_total_norm", "clip_grad_norm_",  # foundation
    "adamw_step_", "adamw_multi_step_", "adamw_int8_step_", "adamw_linear_step_", "sgd_step_", "lion_step_",  # fused optimizers (fasttrain.optim)
    "gather_normalize",  # data loading (fasttrain.data)
    "attention",  # causal self-attention (fasttrain.examples.charlm)
    "int8_dynamic_linear", "int8_weight_linear", "int4_weight_linear",  # quantized inference (fasttrain.quant)
    "quantize_int8_weight", "quantize_int4_weight",
]
