"""fasttrain.kernels: Triton kernels for CUDA tensors.

Installed as `fasttrain.kernels` (the source folder is top-level `kernels/`). Importing a kernel
module imports triton; `import fasttrain` never does. CPU CI runs these kernels on CPU tensors with
TRITON_INTERPRET=1 (fp32/fp16: the interpreter has no bf16).
"""

from __future__ import annotations

from fasttrain._info import triton_installed

if not triton_installed():  # pragma: no cover - depends on the environment
    raise ImportError("fasttrain.kernels needs Triton: pip install 'fasttrain[triton]'")
