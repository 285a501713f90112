"""Verified ONNX export: export, optionally quantize to int8 with onnxruntime, and check the artifact
against the original model before it ships.

    report = fasttrain.export.onnx(model, example_inputs, "model.onnx", quantize="static",
                                   calibration=train_batches, validation=heldout_batches)

Needs the `onnx` extra (`pip install 'fasttrain[onnx]'`: onnx, onnxscript, onnxruntime); those are imported
only when a function here runs.
"""

from __future__ import annotations

from fasttrain.export.onnx_export import ExportReport, QuantizationRejected, onnx

__all__ = ["onnx", "ExportReport", "QuantizationRejected"]
