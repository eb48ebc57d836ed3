#!/usr/bin/env bash
# Download, into .whl/ (ignored by git), the wheels metta needs beyond what a stock CUDA PyTorch image has,
# for Python 3.12 on x86-64 Linux: the image has torch, numpy, numba, psutil, rich, pyyaml, pytest and
# tensorboard, but not pydantic, omegaconf, gymnasium or pettingzoo. wandb and heavyball are imported only
# when used (wandb logging, the Muon optimizer), so they are not needed for training or benchmarks.
#
#   bash benchmarks/gpu_wheels.sh            # on a machine with network access
#   # on the GPU machine, from the repository root:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pins=(
  pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 typing_extensions==4.16.0
  omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
  gymnasium==1.4.0 farama-notifications==0.0.6 pettingzoo==1.27.0
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${pins[@]}"
ls "$dest"
