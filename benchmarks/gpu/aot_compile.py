"""Compile every fasttrain Triton kernel for a GPU target on a machine without a GPU.

The CPU interpreter (TRITON_INTERPRET=1) checks what a kernel computes, not whether Triton can compile
it: type errors in constexpr branches, dot shapes or dtypes a GPU backend rejects, and API changes
between Triton versions only show when compiling. GPU time is scarce, so this runs each public
wrapper in kernels/ on small CPU tensors with the launch replaced by an ahead-of-time
``triton.compile`` for the target (default sm_90, the H100/H200) and reports what failed.
Nothing is launched; the wrappers' outputs are meaningless here.

    TRITON_INTERPRET=0 python benchmarks/gpu/aot_compile.py [--arch 90]
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

os.environ["TRITON_INTERPRET"] = "0"  # the launches below must reach JITFunction, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
        torch.int8: "*i8", torch.uint8: "*u8", torch.int16: "*i16", torch.int32: "*i32", torch.int64: "*i64",
        torch.bool: "*i1"}
compiled: dict[tuple, int] = {}  # variant -> shared memory bytes
SHARED_LIMIT = 232448  # the largest shared memory one block may use on sm_90 (H100/H200)


def _sig(value) -> str:
    if isinstance(value, torch.Tensor):
        return _PTR[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2 ** 31) <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def _launcher(fn: JITFunction, target: GPUTarget):
    def launch(*args, **kwargs):
        names = fn.arg_names
        bound = dict(zip(names, args))
        constexprs = {}
        for name, value in kwargs.items():
            if name in names:
                if name in fn.constexprs or any(p.name == name and p.is_constexpr for p in fn.params):
                    constexprs[name] = value
                else:
                    bound[name] = value
        signature, consts = {}, {}
        for p in fn.params:
            if p.is_constexpr:
                signature[p.name] = "constexpr"
                consts[(p.num,)] = constexprs.get(p.name, p.default)
            else:
                signature[p.name] = _sig(bound[p.name])
        options = {k: kwargs[k] for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in kwargs}
        key = (fn.__name__, tuple(signature.items()), tuple(sorted((k, repr(v)) for k, v in consts.items())),
               tuple(sorted(options.items())))
        if key not in compiled:
            kernel = triton.compile(ASTSource(fn, signature, constexprs=consts), target=target, options=options)
            # Shared memory is checked only when a kernel is loaded on a device: check it here (sm_90: 227 KiB).
            if kernel.metadata.shared > SHARED_LIMIT:
                raise RuntimeError(f"{fn.__name__} {consts} {options}: {kernel.metadata.shared} bytes of shared "
                                   f"memory > {SHARED_LIMIT}")
            compiled[key] = kernel.metadata.shared
    return launch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    JITFunction.__getitem__ = lambda self, grid: _launcher(self, target)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from kernels import grad_norm, optim, quant  # the source tree's kernels (installed as fasttrain.kernels)

    failures = []

    def case(name, thunk):
        try:
            thunk()
            print(f"ok    {name}")
        except Exception:  # noqa: BLE001 - a report, not a handler: print everything, go on
            failures.append(name)
            print(f"FAIL  {name}\n{traceback.format_exc()}")

    for case_fn in CASES:
        case_fn(case, grad_norm, optim, quant)
    print(f"\nlargest shared memory use: {max(compiled.values(), default=0)} bytes")
    print(f"\n{len(compiled)} kernel variants compiled for sm_{args.arch} with Triton {triton.__version__}; "
          f"{len(failures)} failed{': ' + ', '.join(failures) if failures else ''}")
    return 1 if failures else 0


def _adamw_cases(case, grad_norm, optim, quant):
    n = 4099
    for pdt in (torch.float32, torch.float16, torch.bfloat16):
        for sdt in (torch.float32, torch.bfloat16):
            for master in (False, True):
                for amsgrad in (False, True):
                    p, g = torch.zeros(n, dtype=pdt), torch.zeros(n, dtype=pdt)
                    m, v, mx = (torch.zeros(n, dtype=sdt) for _ in range(3))
                    ms = torch.zeros(n) if master else None
                    name = f"adamw_ {pdt} states {sdt} master={master} amsgrad={amsgrad}"
                    kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, maximize=False, amsgrad=amsgrad)
                    case(name, lambda: optim.adamw_(p, g, m, v, mx, ms, lr=1e-3, weight_decay=0.01, step=3.0, **kw))
                    case(name + " device scalars",
                         lambda: optim.adamw_device_scalars_(p, g, m, v, mx, ms, torch.zeros(5), **kw))
    for sdt in (torch.float32, torch.bfloat16):  # stochastic rounding: bf16 params without masters
        p, g = torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
        m, v = torch.zeros(n, dtype=sdt), torch.zeros(n, dtype=sdt)
        kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, maximize=False, amsgrad=False, stochastic_rounding=True, seed=5)
        case(f"adamw_ stochastic rounding states {sdt}",
             lambda: optim.adamw_(p, g, m, v, None, None, lr=1e-3, weight_decay=0.01, step=3.0, **kw))
        case(f"adamw_ stochastic rounding states {sdt} device scalars",
             lambda: optim.adamw_device_scalars_(p, g, m, v, None, None, torch.zeros(5), **kw))
    p, g = torch.zeros(n), torch.zeros(n)
    nb = (n + 255) // 256
    qm, qv = torch.zeros(n, dtype=torch.int8), torch.zeros(n, dtype=torch.uint8)
    sm, sv = torch.zeros(nb), torch.zeros(nb)
    for momentum, nesterov, wd, first in ((0.0, False, 0.0, False), (0.9, False, 0.01, True), (0.9, True, 0.0, False)):
        b = torch.zeros(n)
        case(f"sgd_ momentum={momentum} nesterov={nesterov} wd={wd} first={first}",
             lambda: optim.sgd_(p, g, b, lr=0.1, momentum=momentum, dampening=0.0, weight_decay=wd,
                                nesterov=nesterov, maximize=False, first=first))
    for maximize in (False, True):
        case(f"lion_ maximize={maximize}", lambda: optim.lion_(p, g, torch.zeros(n), lr=1e-4, beta1=0.9, beta2=0.99,
                                                                weight_decay=0.1, maximize=maximize))
    case("adamw_int8_", lambda: optim.adamw_int8_(p, g, qm, qv, sm, sv, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                                  weight_decay=0.01, step=3.0, maximize=False))
    case("adamw_int8_device_scalars_", lambda: optim.adamw_int8_device_scalars_(
        p, g, qm, qv, sm, sv, torch.zeros(5), beta1=0.9, beta2=0.999, eps=1e-8, maximize=False))


def _grad_norm_cases(case, grad_norm, optim, quant):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        ts = [torch.zeros(7, dtype=dtype), torch.zeros(4099, dtype=dtype)]
        for norm_type in (2.0, float("inf")):
            case(f"total_norm {dtype} {norm_type}", lambda: grad_norm.total_norm(ts, norm_type))
            case(f"clip_grad_norm_ {dtype} {norm_type}", lambda: grad_norm.clip_grad_norm_(ts, 1.0, norm_type))


def _quant_cases(case, grad_norm, optim, quant):
    from fasttrain.ops import quant as ops_quant

    K, N = 200, 33
    w = torch.randn(N, K)
    w8, s8, _ = ops_quant.quantize_int8_weight(w)
    int4 = {g: ops_quant.quantize_int4_weight(w, g) for g in (64, 128, 256)}  # group size picks the K step
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for M in (1, 33, 70):  # one per tile shape (kernels.quant._tiles)
            x = torch.randn(M, K, dtype=dtype)
            for bias in (None, torch.zeros(N)):
                tag = f"{dtype} M={M} bias={bias is not None}"
                case(f"int8_weight_linear {tag}", lambda: quant.int8_weight_linear(x, w8, s8, bias))
                case(f"int8_dynamic_linear {tag}", lambda: quant.int8_dynamic_linear(x, w8, s8, bias))
                for g, (w4, s4) in int4.items():
                    for s in (s4, s4.bfloat16()):
                        case(f"int4_weight_linear {tag} group {g} scales {s.dtype}",
                             lambda: quant.int4_weight_linear(x, w4, s, g, bias, out_features=N))


CASES = [_adamw_cases, _grad_norm_cases, _quant_cases]

if __name__ == "__main__":
    sys.exit(main())
