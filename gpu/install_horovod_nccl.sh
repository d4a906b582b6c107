#!/usr/bin/env bash
# On the GPU machine, after bash .gpu/boot.sh: replaces the pack's Gloo-only Horovod with the
# NCCL build carried in .gpu/ (gpu/build_horovod_nccl.sh) and checks that it has GPU operations.
set -euo pipefail
cd "$(dirname "$0")/.."
source /opt/dlrm-gpu/env.sh
python -m pip install -q --no-deps --no-index --force-reinstall .gpu/horovod-0.28.1-*.whl
python -c "import horovod.tensorflow as hvd; assert hvd.nccl_built(), 'no NCCL'; print('horovod', hvd.__version__, 'NCCL built:', hvd.nccl_built(), 'CUDA:', hvd.cuda_built())"
