#!/usr/bin/env bash
# CI stage "emulation": the tflite artifacts of the digits models run by the arm64 build of LiteRT under
# qemu user-mode emulation, compared with the x86 run (tests marked `emulation`). Budget: < 10 min, root
# build included. Cache $EDGEFM_TOOLS_DIR (default ~/.cache/edgefm/tools) between runs: it holds the arm64
# root (~150 MB) and the litert-torch converter environment (~750 MB); both rebuild themselves when stale.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-aarch64-static >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi
qemu-aarch64-static --version | head -1

# Debian arm64 python3.11 + the aarch64 wheels of ai-edge-litert and numpy, into the cache (once).
python -m edgefm.emulate build-root

# The bind-mount of an ARM /proc/cpuinfo needs a private mount namespace (root, or unprivileged user
# namespaces); without it LiteRT crashes while detecting the CPU.
python -m pytest tests/backends/tflite -m emulation -q -p no:cacheprovider
