"""Metric loggers: CSV by default, TensorBoard and MLflow when installed.

A logger sees the trainer only at log points (every `log_every` optimizer steps, validation, the end of
fit), never inside the hot loop, so a slow logger costs time only there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from fasttrain.train.checkpoint import atomic_write_bytes, write_in_background

__all__ = ["Logger", "CSVLogger", "TensorBoardLogger", "MLflowLogger", "make_loggers"]


class Logger:
    """Base class (Lightning's names). Subclasses override `log`; the rest is optional."""

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Called once at the start of fit with the run's configuration (flat dict of str/number/bool)."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finalize(self, status: str) -> None:
        """status: "success", "failed" or "interrupted". The default just closes."""
        self.close()

    def close(self) -> None: ...


class CSVLogger(Logger):
    """Wide CSV (`step` + one column per metric) at `<dir>/metrics.csv`; hyperparameters in
    `<dir>/hparams.json`. A metric seen for the first time adds a column, so the file is then rewritten
    (atomically); otherwise rows are appended."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / "metrics.csv"
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, float]] = []
        self._hparams: bytes | None = None  # what this logger last wrote to hparams.json
        self._file = None  # open for appending between log points (closed by close())
        self._writer: csv.DictWriter | None = None

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        # On the writer thread: even without fsync, temp file + rename costs ~4 ms here (2% of a short
        # fit). Log files skip the fsync (durable=False); the rename still keeps them whole. A fit()
        # that continues training (same hyperparameters) does not rewrite the file.
        data = json.dumps(dict(params), indent=1, default=str).encode()
        if data == self._hparams:
            return
        self._hparams = data
        write_in_background(atomic_write_bytes, self.dir / "hparams.json", data, durable=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or (self._file is None and not self.path.exists()):
            self.close()
            self.columns += new
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.columns)
            w.writeheader()
            w.writerows(self.rows)
            # Rare (a new column): synchronous, so the appends after it stay in order.
            atomic_write_bytes(self.path, buf.getvalue().encode(), durable=False)
            return
        if self._file is None:  # kept open between log points: no open/close per row
            self._file = self.path.open("a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
            # Rows logged outside fit() (validate()) reopen it with nobody to call close(): closed when
            # this logger is collected or at exit instead.
            self._closer = weakref.finalize(self, self._file.close)
        self._writer.writerow(row)
        self._file.flush()  # readers (and a crash) see every row; one write syscall

    def close(self) -> None:
        if self._file is not None:
            self._closer()  # closes the file (once)
            self._file = self._writer = None


class TensorBoardLogger(Logger):
    def __init__(self, directory: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("the TensorBoard logger needs `pip install tensorboard`") from e
        self.writer = SummaryWriter(str(directory))

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("hparams", json.dumps(dict(params), indent=1, default=str))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class MLflowLogger(Logger):
    """Logs to an MLflow tracking server or store through `mlflow.MlflowClient` (never the global
    "active run", so a user's own `mlflow.start_run()` is left alone).

    experiment_name: created if missing. run_name / tags: for a new run. run_id: continue an existing run
        instead (e.g. after `fit(resume=...)`). tracking_uri: default `MLFLOW_TRACKING_URI`, else MLflow's
        own default. prefix: prepended to every metric key ("train/" ...).
    Metrics of one log point go in one `log_batch` call. `fit` ends the run as FINISHED, FAILED (an
    exception) or KILLED (KeyboardInterrupt). Needs `pip install mlflow-skinny` (or `mlflow`).
    """

    _STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, experiment_name: str = "fasttrain", run_name: str | None = None,
                 tracking_uri: str | None = None, tags: Mapping[str, str] | None = None,
                 run_id: str | None = None, prefix: str = ""):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError("the MLflow logger needs `pip install mlflow-skinny` (or `pip install mlflow`)") from e
        self._Metric, self._Param = Metric, Param
        self.client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self.prefix = prefix
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment_name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment_name)
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {})).info.run_id
        self.run_id = run_id
        self._ended = False

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        # MLflow params are immutable strings (<= 6000 chars); a resumed run re-logs identical values.
        self.client.log_batch(self.run_id, params=[self._Param(k, str(v)[:6000]) for k, v in params.items()])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        batch = [self._Metric(self.prefix + k, float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def finalize(self, status: str) -> None:
        if not self._ended:
            self._ended = True
            self.client.set_terminated(self.run_id, self._STATUS.get(status, "FINISHED"))

    def close(self) -> None:
        self.finalize("success")


def make_loggers(spec, directory: str | Path) -> list[Logger]:
    """spec: "csv", "tensorboard", "mlflow", None/"none", a Logger, or a list of those."""
    if spec is None or spec == "none":
        return []
    if isinstance(spec, (str, Logger)):
        spec = [spec]
    out: list[Logger] = []
    for s in spec:
        if isinstance(s, Logger):
            out.append(s)
        elif s == "csv":
            out.append(CSVLogger(directory))
        elif s == "tensorboard":
            out.append(TensorBoardLogger(directory))
        elif s == "mlflow":
            out.append(MLflowLogger())
        else:
            raise ValueError(f"unknown logger {s!r}; use 'csv', 'tensorboard', 'mlflow' or a fasttrain.train.Logger")
    return out
