#!/usr/bin/env bash
# The must-show of a normal install: with the wheel installed non-editable in a fresh venv (VENV), from a folder
# outside the checkout: `edgefm targets` lists the shipped profiles, a default compress of a small real model
# works, and `edgefm.load` runs the bundle. Usage: .ci/smoke_installed.sh VENV   (run from the checkout)
set -euo pipefail
VENV=$(cd "$1" && pwd)
CHECKOUT=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export PYTHONSAFEPATH=1  # nothing from the current folder on sys.path
"$VENV/bin/python" - <<PY
import edgefm, sys
from pathlib import Path
where = Path(edgefm.__file__).resolve()
assert not where.is_relative_to(Path("$CHECKOUT").resolve()), f"edgefm imported from the checkout: {where}"
print("edgefm", edgefm.__version__, "from", where.parent)
PY
"$VENV/bin/edgefm" targets > targets.txt
cat targets.txt
for t in onnxruntime-cpu openvino-cpu tflite-arm64 jetson-orin-nano; do
  grep -q "$t" targets.txt || { echo "edgefm targets does not list $t"; exit 1; }
done
# a small real model: the digits CNN, trained for a few epochs, saved as a state_dict
"$VENV/bin/python" -c "
import torch, edgefm.zoo as z
torch.manual_seed(0); m = z.digits_cnn(); print('fp32 top-1', z.train_digits(m, epochs=5))
torch.save(m.state_dict(), 'cnn.pt')"
# calibration/eval data as shipped in the wheel (edgefm.shipped), not the checkout's files
CAL=$("$VENV/bin/python" -c "import edgefm.shipped as s; print(s.folder('calibration'))")
case "$CAL" in "$CHECKOUT"*) echo "calibration data read from the checkout: $CAL"; exit 1;; esac
"$VENV/bin/edgefm" compress cnn.pt -o bundle --arch edgefm.zoo:digits_cnn --input x:1,1,8,8 \
  --calib "$CAL/digits_calib.npz" --eval "$CAL/digits_eval.npz"
"$VENV/bin/python" - <<PY
import numpy as np, edgefm, json
model = edgefm.load("bundle")
ev = np.load("$CAL/digits_eval.npz")
top1 = float((model({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
m = json.load(open("bundle/manifest.json"))
print(f"edgefm.load: int8 top-1 {top1:.4f} on {len(ev['labels'])} held-out digits; measured on {m['host']}")
assert m["targets"]["onnxruntime-cpu"]["precision"] == "int8" and top1 > 0.8
PY
echo "smoke ok"
