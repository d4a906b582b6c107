#!/usr/bin/env bash
# Creates .venv inside the repository and installs the CPU test environment:
# tensorflow-cpu, numpy, absl-py, pytest and Horovod built from source with Gloo; then builds
# embedding_ops' op library (the tf backend's table kernels; CUDA too where nvcc is found).
# Idempotent: on a ready machine it only checks the imports and the build (a few seconds).
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}
HOROVOD_VERSION=0.28.1
STAMP="$VENV/.setup-$(sha1sum requirements.txt | cut -c1-12)-hvd$HOROVOD_VERSION"

build_ops() {
  make -s -C embedding_ops PYTHON="$(pwd)/$VENV/bin/python"
}

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import tensorflow, horovod.tensorflow, numpy, absl" 2>/dev/null; then
  echo "setup.sh: environment ready ($VENV)"
  build_ops
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
if ! "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
  echo "setup.sh: building horovod==$HOROVOD_VERSION with Gloo (about 3 minutes on 2 cores)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
    "$VENV/bin/python" -m pip install -q --no-cache-dir --no-build-isolation "horovod==$HOROVOD_VERSION"
fi
"$VENV/bin/python" -c "import tensorflow as tf, horovod, horovod.tensorflow; print('setup.sh: tensorflow', tf.__version__, 'horovod', horovod.__version__)"
rm -f "$VENV"/.setup-*
touch "$STAMP"
build_ops
