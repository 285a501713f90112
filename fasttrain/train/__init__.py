"""fasttrain.train: the Trainer, its precision policy, callbacks, loggers and checkpoints."""

from fasttrain.train.allocator import tune_allocator
from fasttrain.train.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ThroughputMonitor,
    Timer,
)
from fasttrain.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fasttrain.train.loggers import CSVLogger, Logger, MLflowLogger, TensorBoardLogger
from fasttrain.train.precision import PRESETS, Precision
from fasttrain.train.trainer import Trainer

__all__ = [
    "Trainer", "Precision", "PRESETS", "Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateMonitor",
    "ThroughputMonitor", "Timer", "CSVLogger", "TensorBoardLogger", "MLflowLogger", "Logger", "CheckpointError", "save_checkpoint",
    "load_checkpoint", "tune_allocator",
]
