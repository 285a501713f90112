"""fasttrain.ops: the only place where tensors meet the compiled core.

Every op here validates its inputs (dtype, device, shape, contiguity, aliasing), is registered with
`torch.library.custom_op` + `register_fake` so torch.compile can trace it, and has a pure-torch
reference in `fasttrain.ops.reference`. `REGISTRY` lists them all.
"""

from fasttrain.ops import reference
from fasttrain.ops._registry import REGISTRY, OpSpec
from fasttrain.ops.grad_norm import clip_grad_norm_, get_total_norm
from fasttrain.ops.quant import __all__ as _quant_all, int4_weight_linear, int8_dynamic_linear, int8_weight_linear, quantize_int4_weight, quantize_int8_weight  # noqa: E501

__all__ = ["REGISTRY", "OpSpec", "clip_grad_norm_", "get_total_norm", "reference"]
__all__ += _quant_all
