#!/usr/bin/env bash
# Creates .venv and installs prefcurate with the given extras (default: bench, i.e. everything the
# commands use: torch/transformers for train and score, alpaca-eval for the demo's and the
# benchmark's length-controlled win rate, TRL for benchmarks/).
#
#   bash .ci/setup.sh          # prefcurate + torch/transformers + alpaca-eval + TRL
#   bash .ci/setup.sh train    # prefcurate + torch/transformers only
#   bash .ci/setup.sh test     # everything + the test suite's needs (+ chromium for the page tests)
#
# torch is installed first, and only when the venv has none: the CUDA build where `nvidia-smi` sees a
# GPU, otherwise the CPU build (a bare `torch` requirement would pull a multi-GB CUDA build). The
# project itself only asks for a range, so a torch you installed yourself is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-bench}"
torch_cpu_version="${PREFCURATE_TORCH_VERSION:-2.13.0}"

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$py" -m pip install "torch>=2.4"
  else
    # The CPU wheel index serves "torch==X+cpu", which sorts above PyPI's "torch==X".
    "$py" -m pip install "torch==${torch_cpu_version}" \
      --extra-index-url https://download.pytorch.org/whl/cpu --timeout 30 --retries 1
  fi
fi
"$py" -m pip install -e ".[${extras}]"

# The inspect page is tested in a real browser: Debian's chromium and its driver (CI runs as root).
if [ "$extras" = "test" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
  else
    echo "setup: chromium/chromedriver missing and not root: the browser tests will skip" >&2
  fi
fi
