"""The checkpoint contract of `fasttrain export` (a plain torch.save'd dict, loadable with weights_only=True):

    {
      "format": "fasttrain.checkpoint/1",
      "factory": "package.module:function",   # importable callable that builds the nn.Module (a class works)
      "factory_kwargs": {...},                 # keyword arguments for it (str / int / float / bool / lists)
      "state_dict": {...},                     # the model's weights
      "input_shape": [1, 64],                  # one example input, batch first (fp32)
      "inputs": Tensor (S, ...) or absent,     # representative inputs: calibration first, validation after
    }

Loading imports and calls `factory`, so a checkpoint is as trusted as the code it names. `save_checkpoint`
writes atomically with a `<path>.sha256` sidecar; `load_checkpoint` verifies it when present.

`load_checkpoint` also reads a Trainer checkpoint (`step-N.ckpt`, `Trainer.save_checkpoint`: the FTCKPT
header with its SHA-256) and maps it onto the same dict: the model weights, the factory the Trainer
recorded (`Trainer.model_factory`, set by `fasttrain train --config`) and the input shape of its first
training batch. `factory` / `factory_kwargs` / `input_shape` arguments fill in or override those.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from fasttrain.export._io import atomic_replace, sha256_file, temp_path_for

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "build_model"]

FORMAT = "fasttrain.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, factory: str, state_dict: dict, input_shape, *,
                    factory_kwargs: dict | None = None, inputs: torch.Tensor | None = None) -> Path:
    """Writes a checkpoint (atomically) and its sha256 sidecar; returns the path."""
    _resolve(factory)  # fail now, not at export time, if the factory cannot be imported
    path = Path(path)
    doc = {"format": FORMAT, "factory": factory, "factory_kwargs": dict(factory_kwargs or {}),
           "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
           "input_shape": [int(s) for s in input_shape]}
    if inputs is not None:
        doc["inputs"] = inputs.detach().cpu().float()
    tmp = temp_path_for(path)
    torch.save(doc, tmp)
    atomic_replace(tmp, path)
    side = path.with_name(path.name + ".sha256")
    tmp = temp_path_for(side)
    tmp.write_text(f"{sha256_file(path)}  {path.name}\n")
    atomic_replace(tmp, side)
    return path


def _resolve(factory: str):
    if not isinstance(factory, str) or ":" not in factory:
        raise ValueError(f"checkpoint factory must be 'package.module:function', got {factory!r}")
    mod, _, attr = factory.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"checkpoint factory {factory!r} cannot be imported ({e}); install the package that "
                         "defines it or fix the name") from e
    if not callable(obj):
        raise ValueError(f"checkpoint factory {factory!r} is not callable")
    return obj


def load_checkpoint(path: str | os.PathLike, *, factory: str | None = None, factory_kwargs: dict | None = None,
                    input_shape=None) -> dict:
    """Reads and validates a checkpoint written to the contract above, or a Trainer checkpoint."""
    from fasttrain.train.checkpoint import wait_for_writes

    wait_for_writes()  # a Trainer's last checkpoint may still be on fasttrain's writer thread
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with path.open("rb") as f:
        is_trainer = f.read(6) == b"FTCKPT"
    if is_trainer:
        return _from_trainer_checkpoint(path, factory, factory_kwargs, input_shape)
    side = path.with_name(path.name + ".sha256")
    if side.is_file() and side.read_text().split()[0] != sha256_file(path):
        raise ValueError(f"checkpoint {str(path)!r} does not match its checksum {side.name} (corrupt or modified)")
    doc = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a fasttrain checkpoint (expected a dict with format={FORMAT!r}; "
                         "write one with fasttrain.export.checkpoint.save_checkpoint)")
    for key in ("factory", "state_dict", "input_shape"):
        if key not in doc:
            raise ValueError(f"checkpoint {str(path)!r} lacks {key!r}")
    if factory is not None:
        doc["factory"], doc["factory_kwargs"] = factory, dict(factory_kwargs or {})
    if input_shape is not None:
        doc["input_shape"] = [int(s) for s in input_shape]
    return doc


def _from_trainer_checkpoint(path: Path, factory, factory_kwargs, input_shape) -> dict:
    from fasttrain.train.checkpoint import CheckpointError
    from fasttrain.train.checkpoint import load_checkpoint as load_trainer_checkpoint

    try:
        state = load_trainer_checkpoint(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    cfg = state.get("config", {})
    factory = factory or cfg.get("model_factory")
    if factory is None:
        raise ValueError(f"Trainer checkpoint {str(path)!r} does not name its model factory; pass --model "
                         "'package.module:function' (or set Trainer.model_factory before training)")
    kwargs = dict(factory_kwargs) if factory_kwargs is not None else dict(cfg.get("model_kwargs") or {})
    spec = cfg.get("input") or {}
    if input_shape is None:
        if "shape" not in spec:
            raise ValueError(f"Trainer checkpoint {str(path)!r} records no input shape; pass --input-shape 1,...")
        input_shape = spec["shape"]
    if spec.get("dtype", "float32") not in ("float32", "float16", "bfloat16", "float64"):
        raise ValueError(f"Trainer checkpoint {str(path)!r}: the model takes {spec['dtype']} inputs; `fasttrain "
                         "export` feeds float inputs, so export integer-input models (token LMs) from Python with "
                         "fasttrain.export.onnx (see fasttrain/demo.py)")
    _resolve(factory)
    return {"format": FORMAT, "factory": factory, "factory_kwargs": kwargs, "state_dict": state["model"],
            "input_shape": [int(s) for s in input_shape]}


def build_model(doc: dict) -> torch.nn.Module:
    """Calls the checkpoint's factory and loads its state_dict (strict); returns the model in eval mode."""
    model = _resolve(doc["factory"])(**doc.get("factory_kwargs", {}))
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"checkpoint factory {doc['factory']!r} returned {type(model).__name__}, not an nn.Module")
    model.load_state_dict(doc["state_dict"])
    return model.eval()
