"""LiteRT model quantization through Google's AI Edge Quantizer (``ai-edge-quantizer``), which works on a
float ``.tflite`` file: fp16 weights, dynamic-range int8, weight-only int8 and full-integer int8.

It runs inside the converter environment (``edgefm.backends.tflite_convert``), where litert-torch
installs it; nothing here is imported by ``import edgefm``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal, Mapping

import numpy as np

Mode = Literal["fp16", "dynamic", "weight_only", "full"]
MODES = ("fp16", "dynamic", "weight_only", "full")


def recipe(mode: Mode, granularity: str = "channel", io: str = "float"):
    """The AI Edge Quantizer recipe for one of ``MODES``.

    ``granularity`` (channel|tensor) applies to int8 weights; ``io`` (float|int8) to full-integer
    models: with ``float`` the model keeps float inputs/outputs and quantizes/dequantizes inside."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName
    gran = qtyping.QuantGranularity.TENSORWISE if granularity == "tensor" else qtyping.QuantGranularity.CHANNELWISE
    rm = recipe_manager.RecipeManager()
    if mode == "fp16":
        rm.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif mode == "dynamic":
        rm.add_dynamic_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=8, granularity=gran)
    elif mode == "weight_only":
        rm.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=8, granularity=gran)
    elif mode == "full":
        rm.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED, activation_num_bits=8,
                             weight_num_bits=8, weight_granularity=gran)
        if io == "float":
            # The virtual INPUT/OUTPUT ops left unquantized make the quantizer add QUANTIZE/DEQUANTIZE
            # at the graph's edges, so the model takes and returns float32.
            for op in (ops.INPUT, ops.OUTPUT):
                rm.add_quantization_config(regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    else:
        raise ValueError(f"unknown LiteRT quantization mode '{mode}'; valid: {', '.join(MODES)}")
    return rm.get_quantization_recipe()


def quantize(src: Path, dst: Path, mode: Mode, calib: Iterable[Mapping[str, np.ndarray]] = (),
             granularity: str = "channel", io: str = "float", signature: str = "serving_default") -> dict:
    """Quantize the float model ``src`` into ``dst``. ``calib`` yields feeds {input name: array with the
    model's batch} and is used only by ``full``. Returns the settings to record in the manifest."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # the quantizer draws progress bars on stderr
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(src), recipe(mode, granularity, io))
    result = None
    n = 0
    if q.need_calibration:
        samples = [dict(s) for s in calib]
        n = len(samples)
        if not samples:
            raise ValueError("full-integer quantization needs calibration samples")
        result = q.calibrate({signature: samples}, num_threads=1)
    q.quantize(result, enable_progress_report=False).export_model(str(dst), overwrite=True)
    return {"quantizer": "ai-edge-quantizer", "mode": mode, "weight_granularity": granularity,
            "io": io if mode == "full" else "float", "calibration_samples": n}
