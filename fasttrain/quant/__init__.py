"""In-process quantized inference: swap `nn.Linear` layers for fasttrain's quantized modules.

    report = fasttrain.quant.quantize(model, scheme="int8-dynamic")   # model is modified in place
    print(report)                                                      # what was / was not quantized

Schemes (all symmetric, see fasttrain.ops.quant for the arithmetic and layouts):
    "int8-dynamic"  int8 per-output-channel weights, int8 per-token activations computed at run time,
                    int32 accumulation (VNNI on AVX-512 CPUs);
    "int8-weight"   int8 per-output-channel weights, fp32 arithmetic;
    "int4-weight"   int4 weights in groups of `group_size` inputs (fp32 or bf16 scales), fp32 arithmetic.

Only plain `nn.Linear` modules are replaced (subclasses such as the projection inside
nn.MultiheadAttention read `.weight` directly and are left alone); every other module holding parameters
is listed in the report as not quantized, with the reason. Packed weights are buffers, so they save and
load through `state_dict`: to load, quantize a freshly built model with the same scheme and group size,
then call `load_state_dict`.
"""

from __future__ import annotations

from fasttrain.quant.modules import Int4WeightLinear, Int8DynamicLinear, Int8WeightLinear, QuantizedLinear
from fasttrain.quant.quantize import SCHEMES, QuantReport, quantize

__all__ = [
    "quantize",
    "QuantReport",
    "SCHEMES",
    "QuantizedLinear",
    "Int8DynamicLinear",
    "Int8WeightLinear",
    "Int4WeightLinear",
]
