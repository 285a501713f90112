"""fasttrain.ops: the only place where tensors meet the compiled core.

Every op here validates its inputs (dtype, device, shape, contiguity, aliasing), is registered with
`torch.library.custom_op` + `register_fake` so torch.compile can trace it, and has a pure-torch
reference in `fasttrain.ops.reference`. `REGISTRY` lists them all.
"""

from fasttrain.ops import reference
from fasttrain.ops._registry import REGISTRY, OpSpec
from fasttrain.ops.grad_norm import clip_grad_norm_, get_total_norm
from fasttrain.ops.data import gather_normalize
from fasttrain.ops.optim import adamw_step_, lion_step_, sgd_step_

__all__ = [
    "REGISTRY", "OpSpec", "adamw_step_", "clip_grad_norm_", "gather_normalize", "get_total_norm", "lion_step_",
    "reference", "sgd_step_",
]
