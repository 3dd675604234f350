#!/usr/bin/env bash
# GPU check: FSDP2 + bf16 + torch.compile on the 124m-class decoder over NCCL, on every GPU of this machine;
# prints tokens/s and MFU (target on one H100/H200-class GPU: >= 50%). Extra arguments go to gpu_check.py:
#   bench/gpu_check.sh                          # 124m, 16 x 1024 tokens per GPU, 10 warm-up + 30 timed steps
#   bench/gpu_check.sh --size 1b --batch 4 --seq 2048
#   NGPU=2 bench/gpu_check.sh --dry-run         # no GPU: CPU processes, gloo, debug model (what CI checks)
# On a machine whose Python lacks lmforge's requirements, run bench/gpu_wheels.sh first where pip reaches PyPI
# and bring .whl along: the missing ones are installed from it into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # lmforge from this checkout, installed or not
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# an image without lmforge's own requirements: the wheels bench/gpu_wheels.sh saved in .whl (carried here)
if ! "$PYTHON" -c "import pydantic" 2>/dev/null && [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [ "$NGPU" -lt 1 ]; then
  echo "gpu_check: no NVIDIA GPU found (nvidia-smi); set NGPU and pass --dry-run to check the script on CPU" >&2
  exit 1
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NGPU" bench/gpu_check.py "$@"
