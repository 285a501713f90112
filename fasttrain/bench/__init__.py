"""Benchmark helpers shared by benchmarks/ and `fasttrain demo`: interleaved timing of fasttrain
against its torch anchor in one run, memory-bandwidth probes, and realistic workloads."""

from fasttrain.bench.roofline import memory_bandwidth
from fasttrain.bench.timing import Timing, interleaved, paired_ratio
from fasttrain.bench.workloads import gpt_param_shapes, make_grads

__all__ = ["Timing", "interleaved", "paired_ratio", "memory_bandwidth", "gpt_param_shapes", "make_grads"]
