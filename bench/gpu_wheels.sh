#!/usr/bin/env bash
# The wheels a lent GPU machine lacks (it has Python 3.12, torch, numpy, pandas, scipy, sklearn, click,
# rich, onnx and onnxruntime, and no internet), at the versions this checkout's environment runs, into
# the git-ignored .whl/. Then, on the device (carry .whl):
#   pip install -q --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 bench/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
binary='optuna|alembic|sqlalchemy|colorlog|mako|markupsafe|greenlet|yacs|termcolor|pydantic|pydantic[-_]core|'
binary+='annotated[-_]types|typing[-_]inspection|typing[-_]extensions|fastapi|starlette|uvicorn|h11|anyio|'
binary+='python[-_]multipart|opentelemetry[-_]api|portalocker|tabulate|pyyaml'
mapfile -t wheels < <(python -m pip freeze | grep -iE "^($binary)==")
mapfile -t sources < <(python -m pip freeze | grep -iE '^(fvcore|iopath)==')  # published as sources only
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl "${wheels[@]}"
python -m pip wheel -q --no-deps -w .whl "${sources[@]}"
ls .whl
