#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the lent GPU machine lacks, for bench/gpu_check.sh.
# That machine reaches no package index; its python3 (3.12) already holds torch (a CUDA build),
# numpy, scipy, scikit-learn, matplotlib, tensorboard, tqdm, joblib, pyyaml and pytest
# (/work/.library/device/KINDS.md), so the project needs only Hydra, OmegaConf and their runtime,
# hydra-joblib-launcher and google-crc32c, at the versions this checkout's .venv uses.
# Run here, from the repository root, where pip reaches an index:   bash bench/gpu_wheels.sh
# then carry .whl with the device run (see bench/README.md, gpu_check.sh).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
rm -rf .whl && mkdir -p .whl
pins=()
for dist in hydra-core omegaconf hydra-joblib-launcher google-crc32c; do
    pins+=("$dist==$(version "$dist")")
done
# The device's python is 3.12 on x86-64 (google-crc32c is the only compiled one).
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
# antlr4-python3-runtime is published as a source archive only: build its (pure-Python) wheel here.
python3 -m pip wheel --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -l .whl
