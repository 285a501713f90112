"""Whether Triton's tl.fma rounds once where the Triton tests run (shared by the kernel and optimizer tests)."""

import torch


def fma_is_exact(device: str) -> bool:
    """Whether tl.fma rounds once here. It does on a GPU and in Triton >= 3.9's interpreter; Triton 3.8's
    interpreter (what `pip install ".[test]"` gets next to torch 2.14.1) computes x * y + z in fp32 with
    two roundings, so kernels that are bit-exact on hardware can differ by an ulp under it.
    (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24 exactly; rounding the product first drops the 2^-24."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr, out_ptr):
        x = tl.load(x_ptr)
        tl.store(out_ptr, tl.fma(x, x, -1.0))

    x = torch.tensor([1.0 + 2.0**-12], device=device)
    out = torch.empty(1, device=device)
    probe[(1,)](x, out)
    return out.item() == 2.0**-11 + 2.0**-24
