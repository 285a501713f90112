"""fasttrain.optim: drop-in torch.optim optimizers that update each param group in one fused pass
over flat buffers (C++ kernels on CPU).

    opt = fasttrain.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

Parameters become views of a flat buffer. Gradients are either autograd's own tensors, read in place by
one multi-tensor call (AdamW with fp32 params and states on CPU after `zero_grad()`, as torch sets them to
None), or views of a flat gradient buffer that backward accumulates into (see fasttrain/optim/_flat.py for
the contract, including what happens when `.grad` is swapped).
"""

from fasttrain.optim.adamw import AdamW
from fasttrain.optim.sgd import SGD, Lion

__all__ = ["AdamW", "SGD", "Lion"]
