"""`fasttrain train --config run.toml`: build a Trainer, its model and its data from a TOML file.

    [model]
    name = "digits-mlp"            # a built-in (see BUILTIN_MODELS) or target = "pkg.module:function"
    kwargs = { hidden = 256 }

    [data]
    name = "digits"                # a built-in, or target = "pkg.module:function" -> (train, val_or_None)
    kwargs = {}

    [trainer]                      # any fasttrain.Trainer argument, plus:
    loss_fn = "cross_entropy"      # a torch.nn.functional name or "pkg.module:function"
    lr_scheduler = { name = "CosineAnnealingLR", T_max = 500 }   # torch.optim.lr_scheduler class + kwargs
    callbacks = [{ name = "EarlyStopping", patience = 3 }]        # fasttrain.train callbacks

Unknown sections or keys are rejected with the valid ones listed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_config", "build_from_config", "ConfigError", "BUILTIN_MODELS", "BUILTIN_DATA"]


class ConfigError(ValueError):
    """The run configuration is invalid; the message says which key and what is allowed."""


def _digits_model(**kw):
    from fasttrain.examples.digits import digits_mlp

    return digits_mlp(**kw)


# Importable names of the built-ins, recorded in checkpoints so `fasttrain export` can rebuild the model.
_BUILTIN_MODEL_TARGETS = {"digits-mlp": "fasttrain.examples.digits:digits_mlp"}


def _digits_data(**kw):
    from fasttrain.examples.digits import load_digits_tensors

    return load_digits_tensors(**kw)


BUILTIN_MODELS = {"digits-mlp": _digits_model}
BUILTIN_DATA = {"digits": _digits_data}


def _import_target(target: str, where: str):
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{where}: target must look like 'package.module:function', got {target!r}")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}: cannot import {target!r}: {e}") from None
    return obj


def _check_keys(section: dict, allowed, where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")


def _factory(section: dict, builtins: dict, where: str):
    _check_keys(section, {"name", "target", "kwargs"}, where)
    if ("name" in section) == ("target" in section):
        raise ConfigError(f"{where}: set exactly one of name (built-ins: {', '.join(builtins)}) or target")
    if "name" in section:
        if section["name"] not in builtins:
            raise ConfigError(f"{where}: unknown built-in {section['name']!r}; built-ins: {', '.join(builtins)}")
        fn = builtins[section["name"]]
    else:
        fn = _import_target(section["target"], where)
    return fn(**section.get("kwargs", {}))


def _named(spec, module, where: str, kinds: str):
    """{name = "X", **kwargs} -> (class X from `module`, kwargs)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: expected a table with a name, e.g. {{ name = \"...\" }}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    cls = getattr(module, spec["name"], None)
    if cls is None:
        raise ConfigError(f"{where}: unknown {kinds} {spec['name']!r}")
    return cls, kwargs


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def build_from_config(cfg: dict[str, Any]):
    """Returns (trainer, train_data, val_data)."""
    from fasttrain.train import callbacks as cb_module
    from fasttrain.train.trainer import Trainer

    _check_keys(cfg, {"model", "data", "trainer"}, "config")
    for required in ("model", "data", "trainer"):
        if required not in cfg:
            raise ConfigError(f"config: missing section [{required}]")
    model = _factory(cfg["model"], BUILTIN_MODELS, "[model]")
    m = cfg["model"]
    factory = (_BUILTIN_MODEL_TARGETS.get(m["name"]) if "name" in m else m["target"], dict(m.get("kwargs", {})))
    data = _factory(cfg["data"], BUILTIN_DATA, "[data]")
    train_data, val_data = data if isinstance(data, tuple) and len(data) == 2 else (data, None)

    t = dict(cfg["trainer"])
    allowed = set(inspect.signature(Trainer.__init__).parameters) - {"self", "model"}
    _check_keys(t, allowed, "[trainer]")
    if "loss_fn" in t:
        name = t["loss_fn"]
        t["loss_fn"] = _import_target(name, "[trainer] loss_fn") if ":" in name else getattr(torch.nn.functional, name, None)
        if t["loss_fn"] is None:
            raise ConfigError(f"[trainer] loss_fn: {name!r} is not in torch.nn.functional (or use 'module:function')")
    if "lr_scheduler" in t:
        cls, kw = _named(t["lr_scheduler"], torch.optim.lr_scheduler, "[trainer] lr_scheduler", "torch scheduler")
        t["lr_scheduler"] = functools.partial(cls, **kw)  # called with the optimizer
    if "callbacks" in t:
        cbs = []
        for i, spec in enumerate(t["callbacks"]):
            cls, kw = _named(spec, cb_module, f"[trainer] callbacks[{i}]", "callback")
            cbs.append(cls(**kw))
        t["callbacks"] = cbs
    if isinstance(t.get("optimizer"), str) and ":" in t["optimizer"]:
        cls = _import_target(t["optimizer"], "[trainer] optimizer")
        t["optimizer"] = functools.partial(cls, **t.pop("optimizer_kwargs", {}))  # called with the params
    try:
        trainer = Trainer(model, **t)
    except TypeError as e:
        raise ConfigError(f"[trainer]: {e}") from None
    if factory[0] is not None:
        trainer.model_factory = factory
    return trainer, train_data, val_data
