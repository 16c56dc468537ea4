"""Run inside the onnx2tf environment (``python -I onnx2tf_run.py request.json``): ONNX -> fp32 .tflite.

Standalone on purpose: that environment has onnx2tf's pinned numpy/onnx/tensorflow and no edgefm. Writes
``result.json`` beside the request: {"ok", "versions", "seconds", "error"}."""

import json
import shutil
import sys
import time
import traceback
from pathlib import Path


def main(path: str) -> int:
    req = json.loads(Path(path).read_text())
    result = {"ok": False, "versions": {}, "seconds": {}}
    try:
        from importlib.metadata import version

        import onnx2tf

        result["versions"] = {p: version(p) for p in ("onnx2tf", "tensorflow", "onnx")}
        t = time.time()
        shapes = [f"{k}:{','.join(str(d) for d in v)}" for k, v in req["input_shapes"].items()]
        replace = None
        if req.get("param_replacement"):  # onnx2tf's parameter replacement file (e.g. outputs transposed back)
            replace = str(Path(req["out_dir"]) / "param_replacement.json")
            Path(replace).write_text(json.dumps({"format_version": 1, "operations": req["param_replacement"]}))
        onnx2tf.convert(
            input_onnx_file_path=req["onnx"], output_folder_path=req["out_dir"],
            overwrite_input_shape=shapes or None,
            # keep the ONNX layout at the boundary: a Predictor feeds what the ModelSpec says (NCHW stays NCHW)
            keep_shape_absolutely_input_names=req["keep_layout"] or None,
            output_signaturedefs=True, copy_onnx_input_output_names_to_tflite=True, non_verbose=True,
            # no test-data download, no int8 here (AI Edge Quantizer quantizes the fp32 model afterwards)
            output_integer_quantized_tflite=False, check_gpu_delegate_compatibility=False,
            param_replacement_file=replace or "")
        result["seconds"]["convert"] = time.time() - t
        fp32 = sorted(Path(req["out_dir"]).glob("*_float32.tflite"))
        if not fp32:
            raise RuntimeError("onnx2tf wrote no *_float32.tflite")
        shutil.copyfile(fp32[0], req["out"])
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001 - reported as data; SystemExit from onnx2tf's own checks too
        lines = [ln for ln in traceback.format_exception_only(type(e), e) if ln.strip()]
        result["error"] = (lines[-1].strip() if lines else type(e).__name__)[:400]
    tmp = Path(path).with_name("result.json.part")
    tmp.write_text(json.dumps(result))
    tmp.rename(tmp.with_name("result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
