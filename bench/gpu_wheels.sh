#!/usr/bin/env bash
# Wheels, into .whl/, of the packages gpu_check.py imports that a CUDA machine's image may lack (its PyTorch,
# numpy, PyYAML, rich, safetensors and tokenizers are used as they are). Run here, where pip reaches PyPI;
# carry .whl to the GPU machine, where bench/gpu_check.sh installs them into /tmp/site if pydantic is missing.
#   bench/gpu_wheels.sh            # for CPython 3.12 (GPU_PYTHON=3.11 etc. for another)
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements.txt; }
packages=("$(pin pydantic)" "$(pin zstandard)" "$(pin phonenumbers)"
          pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)  # pydantic's needs
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
  "${platforms[@]}" -d .whl "${packages[@]}"
ls .whl
