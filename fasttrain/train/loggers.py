"""Metric loggers. CSV is the default; TensorBoard when installed."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fasttrain.train.checkpoint import atomic_write_bytes

__all__ = ["Logger", "CSVLogger", "TensorBoardLogger", "make_loggers"]


class Logger:
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class CSVLogger(Logger):
    """Wide CSV (`step` + one column per metric) at `<dir>/metrics.csv`. A metric seen for the first
    time adds a column, so the file is then rewritten (atomically); otherwise rows are appended."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / "metrics.csv"
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, float]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            self.columns += new
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.columns)
            w.writeheader()
            w.writerows(self.rows)
            atomic_write_bytes(self.path, buf.getvalue().encode())
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(row)


class TensorBoardLogger(Logger):
    def __init__(self, directory: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("the TensorBoard logger needs `pip install tensorboard`") from e
        self.writer = SummaryWriter(str(directory))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


def make_loggers(spec, directory: str | Path) -> list[Logger]:
    """spec: "csv", "tensorboard", None/"none", a Logger, or a list of those."""
    if spec is None or spec == "none":
        return []
    if isinstance(spec, (str, Logger)):
        spec = [spec]
    out = []
    for s in spec:
        if isinstance(s, Logger):
            out.append(s)
        elif s == "csv":
            out.append(CSVLogger(directory))
        elif s == "tensorboard":
            out.append(TensorBoardLogger(directory))
        else:
            raise ValueError(f"unknown logger {s!r}; use 'csv', 'tensorboard' or a fasttrain.train.Logger")
    return out
