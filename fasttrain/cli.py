"""The `fasttrain` command.

    fasttrain info                 what this installation runs (ISA path, threads, torch, Triton)
    fasttrain demo [--seconds S]   train a byte-level GPT on the stdlib source, sample, export to int8 ONNX
    fasttrain bench [--seconds S]  the fused clip_grad_norm_ against torch, same run
    fasttrain train --config F     train from a TOML run file (see fasttrain/train/config.py)
    fasttrain export --checkpoint PATH [--quantize dynamic|static] [--weights auto|per_channel|per_tensor] [--calib N] [--out PATH]
                                   verified ONNX export (checkpoint contract: fasttrain/export/checkpoint.py)
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from fasttrain._info import format_info, info

    print(json.dumps(info(), indent=2) if args.json else format_info())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fasttrain.demo import run_demo

    if args.seconds <= 0:
        raise SystemExit("fasttrain demo: --seconds must be positive")
    run_demo(seconds=args.seconds, out_dir=args.out, small=args.small, export=not args.no_export)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from fasttrain._info import format_info
    from fasttrain.bench import gpt_param_shapes, memory_bandwidth
    from fasttrain.bench.grad_norm import compare_clip_grad_norm

    if args.seconds <= 0:
        raise SystemExit("fasttrain bench: --seconds must be positive")
    print(format_info())
    shapes = gpt_param_shapes() if not args.small else gpt_param_shapes(n_layer=2, d_model=128, vocab=4000, block=128)
    bw = memory_bandwidth(nbytes=(256 << 20) if not args.small else (16 << 20), rounds=5)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    print(
        f"\nclip_grad_norm_ on the gradients of a {n_params / 1e6:.0f}M-parameter GPT ({len(shapes)} tensors), "
        f"fasttrain vs torch foreach, interleaved (medians).\n"
        f"box bandwidth, same run: read {bw['read_gbps']:.1f} GB/s, copy {bw['copy_gbps']:.1f} GB/s\n"
    )
    cases = [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True), (torch.bfloat16, False)]
    print(f"{'dtype':<9}{'case':<8}{'fasttrain ms':>13}{'torch ms':>10}{'speedup':>9}{'GB/s':>8}")
    for dtype, clip in cases:
        r = compare_clip_grad_norm(shapes, dtype, clip=clip, rounds=3, min_seconds=args.seconds / len(cases))
        print(
            f"{r['dtype']:<9}{'clip' if clip else 'noclip':<8}{r['fasttrain_ms']:>13.2f}{r['torch_ms']:>10.2f}"
            f"{r['speedup']:>8.2f}x{r['gbps']:>8.1f}"
        )
    print("\nclip: every call rescales; noclip: the norm is below max_norm (fasttrain skips the write pass).")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fasttrain.train.config import ConfigError, build_from_config, load_config

    try:
        trainer, train_data, val_data = build_from_config(load_config(args.config))
    except ConfigError as e:
        print(f"fasttrain train: {e}", file=sys.stderr)
        return 2
    trainer.fit(train_data, val_data=val_data, resume=args.resume)
    if val_data is not None:
        print(" ".join(f"{k}={v:.4f}" for k, v in trainer.validate(val_data).items()))
    from fasttrain.train.checkpoint import wait_for_writes

    wait_for_writes()  # the command's checkpoints and logs are on disk when it returns
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from fasttrain.export import QuantizationRejected
    from fasttrain.export import onnx as export_onnx
    from fasttrain.export.checkpoint import build_model, load_checkpoint

    if args.calib < 1:
        raise SystemExit("fasttrain export: --calib must be a positive number of samples")
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs is not None else None
        shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
        doc = load_checkpoint(args.checkpoint, factory=args.model, factory_kwargs=kwargs, input_shape=shape)
        model = build_model(doc)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # json.JSONDecodeError is a ValueError
        raise SystemExit(f"fasttrain export: {e}") from None
    shape = list(doc["input_shape"])
    inputs = doc.get("inputs")
    if inputs is None:
        # No representative inputs in the checkpoint: N(0, 1) stands in, and the report says so.
        print("fasttrain export: the checkpoint has no `inputs`; calibrating and validating on N(0, 1) samples "
              "(add representative inputs to the checkpoint for a meaningful check)")
        g = torch.Generator().manual_seed(0)
        inputs = torch.randn([2 * args.calib, *shape[1:]], generator=g)
    calib = inputs[: args.calib]
    val = inputs[args.calib:] if len(inputs) > args.calib else inputs
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    try:
        export_onnx(model, torch.zeros(shape), out, quantize=args.quantize, weights=args.weights,
                    calibration=calib.split(args.batch),
                    validation=val.split(args.batch), min_sqnr_db=args.min_sqnr_db,
                    min_top1_agreement=args.min_top1_agreement)
    except QuantizationRejected as e:
        print(f"fasttrain export: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasttrain", description="fasttrain: a fast, measured PyTorch training core")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="print what this installation runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="train a byte-level GPT on the stdlib source, then export it to int8 ONNX")
    p.add_argument("--seconds", type=float, default=120.0, help="training time budget in seconds (default: 120)")
    p.add_argument("--out", default="fasttrain-demo", help="output folder (default: ./fasttrain-demo)")
    p.add_argument("--small", action="store_true", help="tiny model and corpus (quick check)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("bench", help="time the fused ops against torch and print the ratios")
    p.add_argument("--seconds", type=float, default=8.0, help="total timing budget in seconds (default: 8)")
    p.add_argument("--small", action="store_true", help="use a small model (quick check)")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("train", help="train from a TOML run configuration")
    p.add_argument("--config", required=True, help="path to the run's TOML file")
    p.add_argument("--resume", default=None, help="'last' or a checkpoint path")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("export", help="export a checkpoint to ONNX, optionally int8, and verify it")
    p.add_argument("--checkpoint", required=True,
                   help="an export checkpoint (fasttrain/export/checkpoint.py) or a Trainer checkpoint (step-N.ckpt)")
    p.add_argument("--model", default=None, help="'package.module:function' that builds the model (overrides the "
                   "checkpoint's; needed for Trainer checkpoints that do not record one)")
    p.add_argument("--model-kwargs", default=None, help="JSON keyword arguments for --model, e.g. '{\"hidden\": 128}'")
    p.add_argument("--input-shape", default=None, help="example input shape, batch first, e.g. 1,64")
    p.add_argument("--quantize", choices=["dynamic", "static"], default=None, help="int8 quantization (default: none)")
    p.add_argument("--weights", choices=["auto", "per_channel", "per_tensor"], default="auto",
                   help="int8 weight scales (default auto: per-tensor where it is within 1 dB of per-channel)")
    p.add_argument("--calib", type=int, default=256, help="calibration samples taken from the checkpoint's inputs")
    p.add_argument("--batch", type=int, default=64, help="batch size for calibration and validation (default: 64)")
    p.add_argument("--out", default=None, help="output .onnx path (default: the checkpoint path with .onnx)")
    p.add_argument("--min-sqnr-db", type=float, default=20.0, help="reject the int8 artifact below this SQNR")
    p.add_argument("--min-top1-agreement", type=float, default=0.99, help="reject below this top-1 agreement")
    p.set_defaults(func=_cmd_export)
    return parser


def _version() -> str:
    from fasttrain import __version__

    return f"fasttrain {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
