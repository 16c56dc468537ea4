"""The bad inputs ``edgefm`` must refuse with one clear line (exit code 2, nothing written). Shared by
tests/integration/test_bad_inputs.py (which asserts them) and benchmarks/bad_inputs.py (which times them and
writes benchmarks/results/bad_inputs.md).

Each case is the argv of one command, built from files ``make_fixtures`` writes, and the fragments its error
line must hold: the file or value it names and what would be valid."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "calibration" / "digits_calib.npz"
EVAL = ROOT / "calibration" / "digits_eval.npz"
ARCH = ["--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8"]


@dataclass
class Case:
    id: str
    what: str  # the bad input, in words, for the table
    argv: Callable[[dict], list]  # fixtures -> argv (after `edgefm`); OUT is always "out" in the work folder
    expect: list = field(default_factory=list)  # fragments the error line must contain
    needs_model: bool = True  # False: found before any model is loaded (must be fast, no torch import)


def make_fixtures(root: Path) -> dict:
    """Write every file the cases use into ``root``; returns name -> path (str)."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    fx: dict = {"root": str(root)}

    def put(name: str, text: str) -> str:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        fx[name] = str(p)
        return str(p)

    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    fx["ckpt"] = str(root / "cnn.pt")
    torch.save(zoo.digits_cnn().state_dict(), fx["ckpt"])
    x = np.load(CALIB)["x"][:32].astype(np.float32)
    for name, arrays in {
        "scalar.npz": {"x": np.float32(1.0)},
        "nan.npz": {"x": np.where(np.arange(32)[:, None, None, None] == 5, np.nan, x)},
        "inf.npz": {"x": np.where(np.arange(32)[:, None, None, None] == 7, np.inf, x)},
        "labels999.npz": {"x": x, "labels": np.full(32, 999)},
        "labels-5.npz": {"x": x, "labels": np.r_[np.zeros(31, int), -5]},
        "labels2d.npz": {"x": x, "labels": np.zeros((32, 2), int)},
        "rank3.npz": {"x": x[:, 0]},
        "wrongsize.npz": {"x": np.zeros((32, 1, 9, 8), np.float32)},
        "strings.npz": {"x": np.full((32, 1, 8, 8), "a")},
        "counts.npz": {"x": x, "y": x[:5]},
        "nolabels_only.npz": {"labels": np.zeros(3, int)},
    }.items():
        fx[name] = str(root / name)
        np.savez(fx[name], **arrays)
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    fx["corrupt.npz"] = str(root / "corrupt.npz")
    put("calib.csv", "1,2,3\n")
    put("empty.pt", "")
    put("text.pt", "hello, I am not a checkpoint\n")
    (root / "trunc.pt").write_bytes(Path(fx["ckpt"]).read_bytes()[:4000])
    fx["trunc.pt"] = str(root / "trunc.pt")
    put("hf_list/config.json", "[1, 2, 3]")
    put("hf_badjson/config.json", "{not json")
    put("hf_archs/config.json", json.dumps({"architectures": "BertModel", "model_type": "bert"}))
    put("st_strings/modules.json", json.dumps(["0_Transformer", "1_Pooling"]))
    put("st_escape/modules.json", json.dumps([{"type": "sentence_transformers.models.Transformer", "path": "/etc"}]))
    put("arch_exit.py", "import torch\ndef make():\n    import sys\n    sys.exit(3)\n")
    put("arch_import_exit.py", "import sys\nsys.exit('bye')\ndef make():\n    pass\n")
    put("arch_raise.py", "def make():\n    raise ValueError('no such layer size 7')\n")
    put("arch_notmodule.py", "def make():\n    return 42\n")
    put("arch_other.py", "import torch\ndef make():\n    return torch.nn.Linear(3, 2)\n")
    put("bad_target.yaml", "backend: nosuchruntime\nprecision: int8\n")
    put("list_target.yaml", "- a\n- b\n")
    put("opt_target.yaml", "backend: onnxruntime\nprecision: fp32\noptions:\n  providerz: [CPUExecutionProvider]\n")
    put("recipe_bad.yaml", "prune: [unclosed\n")
    put("recipe_list.yaml", "- prune\n")
    put("recipe_field.yaml", "prunee:\n  ratio: 0.5\n")
    put("recipe_type.yaml", "max_calib_samples: many\n")
    put("recipe_keep_empty.yaml", "keep_fp32: [MatMul, '  ']\n")
    _onnx_fixtures(root, fx)
    (root / "bundle_nomanifest").mkdir(exist_ok=True)
    fx["bundle_nomanifest"] = str(root / "bundle_nomanifest")
    put("bundle_badjson/manifest.json", "{")
    put("result_bad.json", "{\"not\": \"a result\"}")
    return fx


def _onnx_fixtures(root: Path, fx: dict) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    custom = helper.make_model(helper.make_graph([helper.make_node("FancyGelu", ["x"], ["y"], domain="com.example")],
                                                 "g", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(custom, str(root / "custom_op.onnx"))
    fx["custom_op.onnx"] = str(root / "custom_op.onnx")
    unknown = helper.make_model(helper.make_graph([helper.make_node("Gelooo", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(unknown, str(root / "unknown_op.onnx"))
    fx["unknown_op.onnx"] = str(root / "unknown_op.onnx")
    # weights whose external data points to ../secret.bin, outside the model's folder
    (root / "ext").mkdir(exist_ok=True)
    np.ones(16, np.float32).tofile(root / "secret.bin")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        w.external_data.add(key=k, value=v)
    ext = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                            opset_imports=[helper.make_opsetid("", 17)])
    (root / "ext" / "model.onnx").write_bytes(ext.SerializeToString())
    fx["ext.onnx"] = str(root / "ext" / "model.onnx")
    good = Path(fx["custom_op.onnx"]).read_bytes()
    (root / "trunc.onnx").write_bytes(good[: len(good) // 2])
    fx["trunc.onnx"] = str(root / "trunc.onnx")


def _c(fx, *extra):
    """compress the untrained digits CNN to OUT with ``extra`` flags."""
    return ["compress", fx["ckpt"], "-o", "out", *ARCH, *extra]


CASES = [
    # --- found before any model is loaded ---------------------------------------------------------------
    Case("missing-source", "source file does not exist", lambda fx: ["compress", "missing.pt", "-o", "out"],
         ["missing.pt", "no such file"], needs_model=False),
    Case("out-exists", "OUT exists, no --force", lambda fx: ["compress", fx["ckpt"], "-o", fx["root"]],
         ["exists already", "--force"], needs_model=False),
    Case("unknown-target", "--target nosuch", lambda fx: _c(fx, "-t", "nosuch", "--calib", str(CALIB)),
         ["'nosuch'", "known targets", "onnxruntime-cpu"], needs_model=False),
    Case("target-yaml-backend", "target YAML with an unknown backend",
         lambda fx: _c(fx, "-t", fx["bad_target.yaml"]), ["bad_target.yaml", "backend", "nosuchruntime"],
         needs_model=False),
    Case("target-yaml-list", "target YAML that is a list", lambda fx: _c(fx, "-t", fx["list_target.yaml"]),
         ["list_target.yaml", "expected a mapping"], needs_model=False),
    Case("target-options-typo", "target YAML with a misspelt backend option",
         lambda fx: _c(fx, "-t", fx["opt_target.yaml"]), ["'opt_target'", "options.providerz", "Extra inputs"],
         needs_model=False),
    Case("target-twice", "the same --target twice",
         lambda fx: _c(fx, "-t", "onnxruntime-cpu", "-t", "onnxruntime-cpu", "--calib", str(CALIB)),
         ["--target given twice", "onnxruntime-cpu"], needs_model=False),
    Case("quantize-int4", "--quantize int4", lambda fx: _c(fx, "--quantize", "int4"),
         ["quantize", "'int4'", "int8", "fp16", "fp32"], needs_model=False),
    Case("drop-inf", "--max-accuracy-drop inf", lambda fx: _c(fx, "--max-accuracy-drop", "inf"),
         ["max_accuracy_drop", "inf", "finite"], needs_model=False),
    Case("drop-1e308", "--max-accuracy-drop 1e308", lambda fx: _c(fx, "--max-accuracy-drop", "1e308"),
         ["max_accuracy_drop", "1e+308", "less than or equal to 100"], needs_model=False),
    Case("drop-nan", "--max-accuracy-drop nan", lambda fx: _c(fx, "--max-accuracy-drop", "nan"),
         ["max_accuracy_drop", "nan", "finite"], needs_model=False),
    Case("drop-negative", "--max-accuracy-drop -1", lambda fx: _c(fx, "--max-accuracy-drop", "-1"),
         ["max_accuracy_drop", "-1", "greater than or equal to 0"], needs_model=False),
    Case("drop-not-number", "--max-accuracy-drop abc", lambda fx: _c(fx, "--max-accuracy-drop", "abc"),
         ["--max-accuracy-drop", "valid number"], needs_model=False),
    Case("unknown-flag", "--frobnicate", lambda fx: _c(fx, "--frobnicate"), ["--frobnicate"], needs_model=False),
    Case("missing-output", "no -o", lambda fx: ["compress", fx["ckpt"]], ["--output"], needs_model=False),
    Case("metric-drop-inf", "--metric-drop inf", lambda fx: _c(fx, "--metric-drop", "inf"),
         ["metric_drop", "inf", "finite"], needs_model=False),
    Case("metric-missing-file", "--metric nofile.py:fn", lambda fx: _c(fx, "--metric", "nofile.py:fn"),
         ["nofile.py", "no such file"], needs_model=False),
    Case("output-kind-bogus", "--output-kind logits:bogus", lambda fx: _c(fx, "--output-kind", "logits:bogus"),
         ["'logits:bogus'", "'bogus'", "probabilities", "embedding"], needs_model=False),
    Case("verify-emulate-sparc", "verify --emulate sparc", lambda fx: ["verify", fx["bundle_nomanifest"],
                                                                       "--emulate", "sparc"],
         ["--emulate 'sparc'", "arm64"], needs_model=False),
    Case("bench-batch-0", "bench --batch 0", lambda fx: ["bench", fx["bundle_nomanifest"], "--batch", "0"],
         ["batches", "integers >= 1"], needs_model=False),
    Case("max-length-0", "--max-length 0", lambda fx: _c(fx, "--max-length", "0"),
         ["max_length", "0", "greater than or equal to 1"], needs_model=False),
    Case("prune-1.5", "--prune 1.5", lambda fx: _c(fx, "--prune", "1.5"), ["prune", "1.5"], needs_model=False),
    Case("distill-no-prune", "--distill without --prune", lambda fx: _c(fx, "--distill"),
         ["--distill needs --prune"], needs_model=False),
    Case("submodule-of-onnx", "--submodule with an ONNX source",
         lambda fx: ["compress", fx["custom_op.onnx"], "-o", "out", "--submodule", "_model", "--quantize", "fp32"],
         ["--submodule '_model'", "needs a TorchScript file or a state_dict", "ONNX file"], needs_model=False),
    Case("submodule-bad-path", "--submodule a/b", lambda fx: _c(fx, "--submodule", "a/b"),
         ["'a/b' is not a dotted submodule path"], needs_model=False),
    Case("recipe-missing", "--recipe that does not exist", lambda fx: _c(fx, "--recipe", "nope.yaml"),
         ["nope.yaml", "cannot be read"], needs_model=False),
    Case("recipe-bad-yaml", "recipe that is not YAML", lambda fx: _c(fx, "--recipe", fx["recipe_bad.yaml"]),
         ["recipe_bad.yaml", "not valid YAML"], needs_model=False),
    Case("recipe-list", "recipe that is a list", lambda fx: _c(fx, "--recipe", fx["recipe_list.yaml"]),
         ["recipe_list.yaml", "expected a mapping"], needs_model=False),
    Case("recipe-unknown-field", "recipe with a misspelt field",
         lambda fx: _c(fx, "--recipe", fx["recipe_field.yaml"]), ["recipe_field.yaml", "prunee", "Extra inputs"],
         needs_model=False),
    Case("recipe-wrong-type", "recipe field of the wrong type",
         lambda fx: _c(fx, "--recipe", fx["recipe_type.yaml"]), ["max_calib_samples", "'many'", "integer"],
         needs_model=False),
    Case("keep-fp32-empty", "--keep-fp32 '' (an empty name)", lambda fx: _c(fx, "--keep-fp32", ""),
         ["keep_fp32", "'' is not a node name or op type", "MatMul"], needs_model=False),
    Case("recipe-keep-fp32-blank", "recipe keep_fp32 with a blank name",
         lambda fx: _c(fx, "--recipe", fx["recipe_keep_empty.yaml"]),
         ["recipe_keep_empty.yaml", "keep_fp32", "'  ' is not a node name or op type"], needs_model=False),
    Case("input-no-dims", "--input x", lambda fx: ["compress", fx["ckpt"], "-o", "out", "--input", "x"],
         ["--input 'x'", "NAME:DIMS[:DTYPE]", "x:1,3,224,224:float32"], needs_model=False),
    Case("input-bad-dim", "--input x:1,a-b,8", lambda fx: ["compress", fx["ckpt"], "-o", "out", "--input", "x:1,a-b,8"],
         ["'a-b'", "neither a number nor a name"], needs_model=False),
    Case("input-bad-dtype", "--input x:1,1,8,8:complex64",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--input", "x:1,1,8,8:complex64"],
         ["'complex64'", "float32"], needs_model=False),
    Case("input-huge", "--input x:1,1,99999,99999",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--input", "x:1,1,99999,99999"],
         ["x:1,1,99999,99999", "9,999,800,001", "at most 67,108,864"], needs_model=False),
    Case("input-zero-dim", "--input x:1,0,8,8",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--input", "x:1,0,8,8"],
         ["x:1,0,8,8", "dimension 0", "1 to 2147483647"], needs_model=False),
    Case("arch-no-colon", "--arch digits_cnn", lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch", "digits_cnn"],
         ["'digits_cnn'", "module.path:factory"], needs_model=False),
    Case("arch-missing-file", "--arch nofile.py:make",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch", "nofile.py:make"],
         ["nofile.py", "no such file"], needs_model=False),
    Case("calib-missing", "--calib that does not exist", lambda fx: _c(fx, "--calib", "nope.npz"),
         ["--calib nope.npz", "no such file"], needs_model=False),
    Case("calib-csv", "--calib .csv", lambda fx: _c(fx, "--calib", fx["calib.csv"]),
         ["calib.csv", "unknown format", ".npz"], needs_model=False),
    Case("eval-missing", "--eval that does not exist", lambda fx: _c(fx, "--calib", str(CALIB), "--eval", "nope.npz"),
         ["--eval nope.npz", "no such file"], needs_model=False),
    Case("int8-no-calib", "int8 without --calib", lambda fx: _c(fx), ["int8 needs calibration data", "--calib"],
         needs_model=False),
    Case("out-under-file", "OUT inside a file", lambda fx: ["compress", fx["ckpt"], "-o", fx["ckpt"] + "/out",
                                                            *ARCH, "--quantize", "fp32"],
         ["cnn.pt", "is a file, not a folder"], needs_model=False),
    Case("inspect-missing", "inspect a folder that does not exist", lambda fx: ["inspect", "nobundle"],
         ["nobundle", "no such folder"], needs_model=False),
    Case("inspect-no-manifest", "inspect a folder without manifest.json",
         lambda fx: ["inspect", fx["bundle_nomanifest"]], ["bundle_nomanifest", "no manifest.json"], needs_model=False),
    Case("inspect-bad-manifest", "inspect a manifest that is not JSON",
         lambda fx: ["inspect", str(Path(fx["bundle_badjson/manifest.json"]).parent)],
         ["bundle_badjson", "not a valid manifest"], needs_model=False),
    Case("inspect-a-file", "inspect a file that is not a bundle folder", lambda fx: ["inspect", fx["ckpt"]],
         ["cnn.pt", "is a file", "inspect takes a bundle folder", "manifest.json"], needs_model=False),
    Case("inspect-bad-manifest-file", "inspect a bundle's manifest.json that is not JSON (inspects its folder)",
         lambda fx: ["inspect", fx["bundle_badjson/manifest.json"]], ["bundle_badjson", "not a valid manifest"],
         needs_model=False),
    Case("verify-a-file", "verify a file, not a bundle folder", lambda fx: ["verify", fx["ckpt"]],
         ["cnn.pt", "is a file", "a bundle is a folder"], needs_model=False),
    Case("bench-missing", "bench a folder that does not exist", lambda fx: ["bench", "nobundle"],
         ["nobundle"], needs_model=False),
    Case("report-bad-json", "report on a JSON that is not a result",
         lambda fx: ["report", fx["result_bad.json"], "-o", "out"], ["result_bad.json"], needs_model=False),
    # --- found while loading the model or its data ------------------------------------------------------------
    Case("empty-file", "empty checkpoint", lambda fx: ["compress", fx["empty.pt"], "-o", "out", "--quantize", "fp32"],
         ["empty.pt", "empty"]),
    Case("text-file", "a text file as checkpoint",
         lambda fx: ["compress", fx["text.pt"], "-o", "out", "--quantize", "fp32"], ["text.pt", "unknown file kind",
                                                                                     "state_dict"]),
    Case("truncated-pt", "truncated torch.save zip",
         lambda fx: ["compress", fx["trunc.pt"], "-o", "out", *ARCH, "--quantize", "fp32"], ["trunc.pt", "truncated"]),
    Case("state-dict-no-arch", "state_dict without --arch",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--quantize", "fp32"], ["cnn.pt", "--arch"]),
    Case("arch-mismatch", "--arch that does not fit the weights",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch", fx["arch_other.py"] + ":make", "--quantize", "fp32"],
         ["does not fit", "missing keys", "unexpected keys"]),
    Case("arch-sys-exit", "--arch factory calling sys.exit(3)",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch", fx["arch_exit.py"] + ":make", "--quantize", "fp32"],
         ["arch_exit.py:make", "sys.exit(3)", "nn.Module"]),
    Case("arch-import-exit", "--arch file calling sys.exit at import",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch", fx["arch_import_exit.py"] + ":make",
                     "--quantize", "fp32"], ["arch_import_exit.py", "sys.exit('bye')"]),
    Case("arch-raises", "--arch factory raising", lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch",
                                                              fx["arch_raise.py"] + ":make", "--quantize", "fp32"],
         ["arch_raise.py:make", "ValueError", "no such layer size 7"]),
    Case("arch-not-module", "--arch factory returning 42", lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch",
                                                                       fx["arch_notmodule.py"] + ":make",
                                                                       "--quantize", "fp32"],
         ["arch_notmodule.py:make", "int", "torch.nn.Module"]),
    Case("input-rank", "--input of the wrong rank for the model",
         lambda fx: ["compress", fx["ckpt"], "-o", "out", "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,8,8",
                     "--quantize", "fp32"], ["x"]),
    Case("calib-0d", "calibration .npz holding a 0-d array", lambda fx: _c(fx, "--calib", fx["scalar.npz"]),
         ["scalar.npz", "'x'", "0-d", "[N, ...]"]),
    Case("calib-nan", "NaN in calibration sample 5", lambda fx: _c(fx, "--calib", fx["nan.npz"]),
         ["nan.npz", "input 'x' sample 5", "NaN", "finite"]),
    Case("calib-inf", "Inf in calibration sample 7", lambda fx: _c(fx, "--calib", fx["inf.npz"]),
         ["inf.npz", "input 'x' sample 7", "infinite", "finite"]),
    Case("labels-999", "labels 999 (10 classes)", lambda fx: _c(fx, "--calib", fx["labels999.npz"]),
         ["labels999.npz", "label 999", "0..9", "10 classes"]),
    Case("labels-neg5", "label -5", lambda fx: _c(fx, "--calib", str(CALIB), "--eval", fx["labels-5.npz"]),
         ["labels-5.npz", "label -5", "sample 31", "0..9"]),
    Case("labels-2d", "labels of shape [32, 2]", lambda fx: _c(fx, "--calib", fx["labels2d.npz"]),
         ["labels2d.npz", "'labels' must be 32 integers", "[32, 2]"]),
    Case("calib-rank", "calibration of rank 3 for a rank-4 input", lambda fx: _c(fx, "--calib", fx["rank3.npz"]),
         ["rank3.npz", "[32, 8, 8]", "rank 4", "['batch', 1, 8, 8]"]),
    Case("calib-size", "calibration 9x8 for an 8x8 input", lambda fx: _c(fx, "--calib", fx["wrongsize.npz"]),
         ["wrongsize.npz", "axis 2 must be 8"]),
    Case("calib-strings", "calibration of strings", lambda fx: _c(fx, "--calib", fx["strings.npz"]),
         ["strings.npz", "'x'", "dtype <U1", "float32"]),
    Case("calib-counts", "arrays with different sample counts", lambda fx: _c(fx, "--calib", fx["counts.npz"]),
         ["counts.npz", "different sample counts"]),
    Case("calib-corrupt", "corrupt .npz", lambda fx: _c(fx, "--calib", fx["corrupt.npz"]),
         ["corrupt.npz", "not a readable .npz"]),
    Case("calib-labels-only", ".npz with only labels", lambda fx: _c(fx, "--calib", fx["nolabels_only.npz"]),
         ["nolabels_only.npz", "no input arrays"]),
    Case("hf-config-list", "HF config.json that is a list",
         lambda fx: ["compress", str(Path(fx["hf_list/config.json"]).parent), "-o", "out", "--quantize", "fp32"],
         ["config.json", "expected a JSON object", "list"]),
    Case("hf-config-badjson", "HF config.json that is not JSON",
         lambda fx: ["compress", str(Path(fx["hf_badjson/config.json"]).parent), "-o", "out", "--quantize", "fp32"],
         ["config.json", "not valid JSON"]),
    Case("hf-architectures-str", "HF config.json with architectures a string",
         lambda fx: ["compress", str(Path(fx["hf_archs/config.json"]).parent), "-o", "out", "--quantize", "fp32"],
         ["config.json", "'architectures'", "[\"BertModel\"]"]),
    Case("st-modules-strings", "modules.json of strings",
         lambda fx: ["compress", str(Path(fx["st_strings/modules.json"]).parent), "-o", "out", "--quantize", "fp32"],
         ["modules.json", "list of sentence-transformers modules", "'type' and 'path'"]),
    Case("st-modules-escape", "modules.json whose path is /etc",
         lambda fx: ["compress", str(Path(fx["st_escape/modules.json"]).parent), "-o", "out", "--quantize", "fp32"],
         ["modules.json", "'/etc'", "relative"]),
    Case("onnx-custom-op", "ONNX with a custom op",
         lambda fx: ["compress", fx["custom_op.onnx"], "-o", "out", "--quantize", "fp32"],
         ["custom_op.onnx", "com.example::FancyGelu", "standard"]),
    Case("onnx-unknown-op", "ONNX with a non-existent standard op",
         lambda fx: ["compress", fx["unknown_op.onnx"], "-o", "out", "--quantize", "fp32"],
         ["unknown_op.onnx", "'Gelooo'", "not a standard ONNX op"]),
    Case("onnx-external-outside", "ONNX whose external data is ../secret.bin",
         lambda fx: ["compress", fx["ext.onnx"], "-o", "out", "--quantize", "fp32"],
         ["model.onnx", "'../secret.bin'", "outside", "beside the model"]),
    Case("onnx-truncated", "truncated ONNX", lambda fx: ["compress", fx["trunc.onnx"], "-o", "out", "--quantize", "fp32"],
         ["trunc.onnx", "corrupt or truncated"]),
]
