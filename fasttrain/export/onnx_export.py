"""fasttrain.export.onnx: torch -> ONNX (fp32) -> onnxruntime int8 (optional) -> verified report.

Exporter: torch.onnx.export(dynamo=True) with a dynamic batch dimension; if that raises, the TorchScript
exporter (dynamo=False, dynamic_axes); the report records which ran and why. Quantization follows
onnxruntime's recommended CPU recipe: quant_pre_process (shape inference + graph optimization), then
  "dynamic": quantize_dynamic, int8 weights (activations quantized at run time by ORT); weights="auto"
             makes per-channel and per-tensor artifacts and keeps per-tensor (faster in ORT) when it is
             within 1 dB of per-channel's SQNR;
  "static":  quantize_static, QDQ format, S8S8 (int8 activations and weights), per-channel weights
             (unless weights="per_tensor"), MinMax calibration over `calibration` (any iterable of input batches).
Verification runs the torch model (fp32) and both ONNX artifacts on the held-out `validation` batches.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path

import torch

from fasttrain.export._io import atomic_replace, atomic_write_json, sha256_file, temp_path_for

__all__ = ["onnx", "ExportReport", "QuantizationRejected"]

_EXTRA = "pip install 'fasttrain[onnx]'"


def _require_onnx():
    """Imports the onnx extra lazily, with an error that names it."""
    try:
        import onnx as onnx_pkg
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"fasttrain.export.onnx needs onnx and onnxruntime ({e}); install them with `{_EXTRA}`") from e
    return onnx_pkg, ort


class QuantizationRejected(ValueError):
    """The quantized artifact failed the accuracy thresholds; only the fp32 artifact was kept. `.report` has the numbers."""

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    fp32_path: str
    exporter: str  # "dynamo" or "torchscript"
    exporter_note: str  # why the TorchScript exporter ran, if it did
    fp32_sha256: str
    fp32_max_abs_err: float  # ORT fp32 vs torch: checks the export itself
    weight_bytes_fp32: int
    validation_samples: int
    quantize: str | None = None
    quantized_path: str | None = None
    quantized_sha256: str | None = None
    calibration_batches: int = 0
    sqnr_db: float | None = None  # int8 ORT vs torch fp32 on the validation inputs
    max_abs_err: float | None = None
    top1_agreement: float | None = None  # classifiers (2-D output, > 1 class) only
    weight_bytes_int8: int | None = None
    weight_granularity: str | None = None  # "per_channel" | "per_tensor": the int8 weight scales kept
    sqnr_db_candidates: dict[str, float] = field(default_factory=dict)  # weights="auto": SQNR of each candidate
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # {"fp32"|"int8": {"batch_1"|"batch_N": ms}}
    min_sqnr_db: float | None = None
    min_top1_agreement: float | None = None
    passed: bool = True
    report_path: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        rows = [("artifact", "fp32", "int8" if self.quantize else "-")]
        rows.append(("path", Path(self.fp32_path).name, Path(self.quantized_path).name if self.quantized_path else "-"))
        rows.append(("weight MB", f"{self.weight_bytes_fp32 / 1e6:.3f}",
                     f"{self.weight_bytes_int8 / 1e6:.3f}" if self.weight_bytes_int8 is not None else "-"))
        for key in sorted({k for v in self.latency_ms.values() for k in v}):
            rows.append((f"ORT ms, {key.replace('_', ' ')}", f"{self.latency_ms.get('fp32', {}).get(key, float('nan')):.3f}",
                         f"{self.latency_ms['int8'][key]:.3f}" if key in self.latency_ms.get("int8", {}) else "-"))
        rows.append(("max |err| vs torch", f"{self.fp32_max_abs_err:.3g}",
                     f"{self.max_abs_err:.3g}" if self.max_abs_err is not None else "-"))
        if self.sqnr_db is not None:
            rows.append(("SQNR dB vs torch", "-", f"{self.sqnr_db:.1f} (min {self.min_sqnr_db})"))
        if self.weight_granularity is not None:
            alt = ", ".join(f"{g} {v:.1f} dB" for g, v in self.sqnr_db_candidates.items() if g != self.weight_granularity)
            rows.append(("int8 weight scales", "-", self.weight_granularity + (f" (candidate {alt})" if alt else "")))
        if self.top1_agreement is not None:
            rows.append(("top-1 agreement", "-", f"{100 * self.top1_agreement:.2f}% (min {100 * self.min_top1_agreement:.2f}%)"))
        w = max(len(r[0]) for r in rows)
        c = max(len(r[1]) for r in rows)
        head = (f"fasttrain.export.onnx: exporter={self.exporter}"
                + (f" ({self.exporter_note})" if self.exporter_note else "")
                + (f", quantize={self.quantize}" if self.quantize else "")
                + f", {self.validation_samples} validation samples, "
                + ("PASSED" if self.passed else "REJECTED (int8 artifact removed)"))
        return "\n".join([head] + [f"  {a:<{w}}  {b:>{c}}  {d}" for a, b, d in rows])


def _as_tuple(inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in inputs) and inputs:
        return tuple(inputs)
    raise TypeError("fasttrain.export.onnx: inputs must be a tensor or a non-empty tuple of tensors "
                    f"(batch first), got {type(inputs).__name__}")


def _first_output(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


@contextlib.contextmanager
def _quiet_exporter():
    # Precise filters for what torch's exporters say about themselves on torch 2.13, not about the model.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed\. Please remove usage of this function",
                                category=DeprecationWarning, module=r"torch\.onnx")
        yield


def _export_fp32(model, example: tuple[torch.Tensor, ...], path: Path, opset: int | None,
                 exporter: str) -> tuple[str, str]:
    names = [f"input_{i}" for i in range(len(example))] if len(example) > 1 else ["input"]
    # torch.export specializes size-1 dimensions, so a batch-1 example would pin the batch to 1: trace on 2.
    example = tuple(t.expand(2, *t.shape[1:]).contiguous() if t.dim() and t.shape[0] == 1 else t for t in example)
    tmp = temp_path_for(path)
    note = ""
    if exporter in ("auto", "dynamo"):
        try:
            batch = torch.export.Dim("batch")
            with _quiet_exporter():
                torch.onnx.export(model, example, str(tmp), dynamo=True, verbose=False, input_names=names,
                                  output_names=["output"], dynamic_shapes=tuple({0: batch} for _ in example),
                                  opset_version=opset, external_data=False)
            atomic_replace(tmp, path)
            return "dynamo", note
        except Exception as e:  # noqa: BLE001 - any exporter failure falls back, and is recorded
            if exporter == "dynamo":
                raise
            note = f"dynamo exporter failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            tmp.unlink(missing_ok=True)
    with _quiet_exporter():
        torch.onnx.export(model, example, str(tmp), dynamo=False, input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} for n in names + ["output"]}, opset_version=opset or 17)
    atomic_replace(tmp, path)
    return "torchscript", note


def _weight_bytes(onnx_pkg, path: Path) -> int:
    from onnx import numpy_helper

    m = onnx_pkg.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer))


def _session(ort, path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _feeds(sess, batch: tuple[torch.Tensor, ...]) -> dict:
    return {i.name: t.detach().cpu().contiguous().numpy() for i, t in zip(sess.get_inputs(), batch)}


def _calibration_reader(sess, calibration: Iterable):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds onnxruntime's calibrator from any iterable of input batches (tensors or tuples of tensors)."""

        def __init__(self):
            self.count = 0
            self._it = iter(calibration)

        def get_next(self):
            try:
                batch = next(self._it)
            except StopIteration:
                return None
            self.count += 1
            return _feeds(sess, _as_tuple(batch))

    return _Reader()


def _quantize(ort, pre: Path, out: Path, mode: str, calibration, sess, per_channel: bool = True) -> int:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    tmp = temp_path_for(out)
    if mode == "dynamic":
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
        _scalar_weight_zero_points(tmp)
        n = 0
    else:
        reader = _calibration_reader(sess, calibration)
        quantize_static(str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax)
        n = reader.count
        if n == 0:
            tmp.unlink(missing_ok=True)
            raise ValueError("fasttrain.export.onnx: `calibration` yielded no batches; pass an iterable of input batches")
    atomic_replace(tmp, out)
    return n


def _scalar_weight_zero_points(path: Path) -> None:
    """Replaces each MatMulInteger's per-column weight zero point (input 3) by a scalar 0 when it is all
    zeros, as it always is for symmetric int8 weights. Same values; but onnxruntime's fused
    DynamicQuantizeMatMul takes a slower path for a per-column zero point than for a per-column scale
    alone (MLAS's per-column zero-point GEMM). Static QDQ models are left alone: there the zero point is
    part of the pattern ORT fuses into QGemm (dropping it unfuses the graph to fp32 Gemm)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    scalars: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        name = node.input[3]
        if name not in scalars:
            zp = numpy_helper.to_array(inits[name])
            if zp.ndim != 1 or zp.any():
                continue
            scalars[name] = f"{name}_scalar"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros((), zp.dtype), scalars[name]))
        node.input[3] = scalars[name]
    if not scalars:
        return
    used = {i for node in model.graph.node for i in node.input}
    keep = [i for i in model.graph.initializer if i.name in used or i.name not in scalars]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save(model, str(path))


# weights="auto": per-tensor int8 weight scales are kept when their SQNR is at most this much below
# per-channel's (1 dB: ~26% more noise power, on top of what activation quantization already adds).
AUTO_SQNR_SLACK_DB = 1.0


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    r, d = ref.double(), out.double() - ref.double()
    return float(20 * torch.log10(r.norm() / d.norm())) if d.norm() > 0 else float("inf")


def _latency(sessions: dict, batch: tuple[torch.Tensor, ...], rounds: int) -> dict[str, dict[str, float]]:
    from fasttrain.bench import interleaved

    out: dict[str, dict[str, float]] = {k: {} for k in sessions}
    n = batch[0].shape[0]
    for label, b in (("batch_1", tuple(t[:1] for t in batch)), (f"batch_{n}", batch)):
        fns = {}
        for k, s in sessions.items():
            feeds = _feeds(s, b)
            fns[k] = lambda s=s, feeds=feeds: s.run(None, feeds)
        t = interleaved(fns, rounds=rounds, warmup=2)
        for k in sessions:
            out[k][label] = t[k].median * 1e3
    return out


@torch.no_grad()
def onnx(
    model: torch.nn.Module,
    example_inputs,
    path: str | os.PathLike,
    quantize: str | None = None,
    calibration: Iterable | None = None,
    *,
    validation: Iterable | None = None,
    min_sqnr_db: float = 20.0,
    min_top1_agreement: float = 0.99,
    exporter: str = "auto",
    weights: str = "auto",
    opset: int | None = None,
    latency_rounds: int = 20,
    threads: int | None = None,
    verbose: bool = True,
) -> ExportReport:
    """Exports `model` to ONNX at `path` (fp32), optionally writes an int8 artifact beside it
    (`<stem>.int8.onnx`), verifies it and writes the report as `<stem>.report.json` (atomic, checksummed).

    example_inputs: tensor or tuple of tensors, batch first (the batch dimension is exported as dynamic).
    quantize: None | "dynamic" | "static" ("static" needs `calibration`: an iterable of input batches,
        e.g. a DataLoader of inputs or a list of tensors).
    validation: held-out input batches for the checks (default: example_inputs, which the report notes by
        validation_samples; pass real held-out data to make the check meaningful). Outputs compared: the
        model's first output. top-1 agreement is computed when that output is (batch, classes > 1).
    min_sqnr_db / min_top1_agreement: thresholds; below either, the int8 artifact is deleted, the report is
        still written (passed=false) and QuantizationRejected is raised.
    weights: int8 weight scales, "per_channel" (one per output channel), "per_tensor" or "auto": for
        quantize="dynamic", both are made and verified and per-tensor is kept when its SQNR is within
        AUTO_SQNR_SLACK_DB (1 dB) of per-channel's (with per-channel scales the artifact ran at 0.90x-0.93x
        of ORT's own per-tensor one at batch 1 in `benchmarks/bench_quant.py`); for "static", "auto" means
        per-channel.
        The choice and both SQNRs are in the report (weight_granularity, sqnr_db_candidates).
    exporter: "auto" (dynamo, else TorchScript), "dynamo" or "torchscript". threads: ORT intra-op threads
        (default fasttrain's). Returns the ExportReport (printed as a table when verbose).
    Models whose fp32 weights exceed 2 GB (ONNX's single-file limit) are not supported.
    """
    onnx_pkg, ort = _require_onnx()
    if quantize not in (None, "dynamic", "static"):
        raise ValueError(f"fasttrain.export.onnx: quantize must be None, 'dynamic' or 'static', got {quantize!r}")
    if quantize == "static" and calibration is None:
        raise ValueError("fasttrain.export.onnx: quantize='static' needs `calibration` (an iterable of input batches)")
    if weights not in ("auto", "per_channel", "per_tensor"):
        raise ValueError(f"fasttrain.export.onnx: weights must be 'auto', 'per_channel' or 'per_tensor', got {weights!r}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"fasttrain.export.onnx: exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fasttrain.export.onnx: `model` must be an nn.Module, got {type(model).__name__}")
    example = _as_tuple(example_inputs)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"fasttrain.export.onnx: path must end in .onnx, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"fasttrain.export.onnx: directory {str(path.parent)!r} does not exist; create it first")
    if threads is None:
        from fasttrain._ext import num_threads

        threads = num_threads()
    was_training = model.training
    model.eval()
    try:
        used, note = _export_fp32(model, example, path, opset, exporter)
    finally:
        model.train(was_training)
    val = [_as_tuple(b) for b in (validation if validation is not None else [example])]
    if not val:
        raise ValueError("fasttrain.export.onnx: `validation` yielded no batches")
    model.eval()
    try:
        ref = torch.cat([_first_output(model(*b)).float() for b in val])
    finally:
        model.train(was_training)

    sess32 = _session(ort, path, threads)
    out32 = torch.cat([torch.from_numpy(sess32.run(None, _feeds(sess32, b))[0]) for b in val])
    report = ExportReport(
        fp32_path=str(path), exporter=used, exporter_note=note, fp32_sha256=sha256_file(path),
        fp32_max_abs_err=float((out32 - ref).abs().max()), weight_bytes_fp32=_weight_bytes(onnx_pkg, path),
        validation_samples=int(ref.shape[0]), quantize=quantize,
        versions={"torch": torch.__version__, "onnxruntime": ort.__version__, "onnx": onnx_pkg.__version__,
                  "python": platform.python_version()},
    )
    sessions = {"fp32": sess32}
    qpath = path.with_name(path.stem + ".int8.onnx")
    if quantize:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if weights != "auto":
            grans = [weights]
        else:
            grans = ["per_channel", "per_tensor"] if quantize == "dynamic" else ["per_channel"]
        pre = temp_path_for(path.with_name(path.stem + ".pre.onnx"))
        made: dict[str, tuple[Path, Any, torch.Tensor, float]] = {}
        try:
            quant_pre_process(str(path), str(pre))
            for g in grans:
                out = qpath if len(grans) == 1 else path.with_name(f"{path.stem}.int8.{g}.onnx")
                report.calibration_batches = _quantize(ort, pre, out, quantize, calibration, sess32,
                                                       per_channel=g == "per_channel")
                sess = _session(ort, out, threads)
                out8 = torch.cat([torch.from_numpy(sess.run(None, _feeds(sess, b))[0]) for b in val])
                made[g] = (out, sess, out8, _sqnr_db(ref, out8))
            chosen = grans[0]
            if len(grans) == 2 and made["per_tensor"][3] >= made["per_channel"][3] - AUTO_SQNR_SLACK_DB:
                chosen = "per_tensor"
            if made[chosen][0] != qpath:
                atomic_replace(made[chosen][0], qpath)
        finally:
            pre.unlink(missing_ok=True)
            for g, (out, *_rest) in made.items():
                if out != qpath:
                    out.unlink(missing_ok=True)
        _, sess8, out8, report.sqnr_db = made[chosen]
        report.weight_granularity = chosen
        report.sqnr_db_candidates = {g: m[3] for g, m in made.items()}
        d = out8.double() - ref.double()
        report.max_abs_err = float(d.abs().max())
        if ref.dim() == 2 and ref.shape[1] > 1:
            report.top1_agreement = float((out8.argmax(1) == ref.argmax(1)).double().mean())
        report.weight_bytes_int8 = _weight_bytes(onnx_pkg, qpath)
        report.quantized_path, report.quantized_sha256 = str(qpath), sha256_file(qpath)
        report.min_sqnr_db, report.min_top1_agreement = min_sqnr_db, min_top1_agreement
        report.passed = report.sqnr_db >= min_sqnr_db and (
            report.top1_agreement is None or report.top1_agreement >= min_top1_agreement)
        sessions["int8"] = sess8
    if latency_rounds > 0:
        report.latency_ms = _latency(sessions, val[0], latency_rounds)
    report_path = path.with_name(path.stem + ".report.json")
    report.report_path = str(report_path)
    if not report.passed:
        qpath.unlink(missing_ok=True)
    atomic_write_json(report_path, report.to_dict())
    if verbose:
        print(report)
    if not report.passed:
        top1 = "" if report.top1_agreement is None else f", top-1 agreement {report.top1_agreement:.4f} (min {min_top1_agreement})"
        raise QuantizationRejected(
            f"fasttrain.export.onnx: the int8 artifact failed verification: SQNR {report.sqnr_db:.1f} dB "
            f"(min {min_sqnr_db}){top1}; kept only {path} (report: {report_path}). Try quantize='static' with "
            "more representative calibration data, or keep the fp32 model.", report)
    return report
