#!/usr/bin/env bash
# On the GPU machine, after bash .gpu/boot.sh: installs the builds carried in .gpu/ into the
# pack's venv and checks them: Horovod with NCCL (gpu/build_horovod_nccl.sh) over the pack's
# Gloo-only one, and SOK 2.1.0 (gpu/build_sok.sh). SOK's libraries need libcurand.so.10 (CUDA
# 13's cuRAND) and libnccl.so.2 at load time: the first found on this machine is linked into
# /opt/dlrm-gpu/libs, which env.sh puts on LD_LIBRARY_PATH.
#
#   bash gpu/install_builds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source /opt/dlrm-gpu/env.sh
libs=/opt/dlrm-gpu/libs
shopt -s nullglob
horovod=(.gpu/horovod-0.28.1-*.whl) sok=(.gpu/merlin_sok-2.1.0-*.whl)
[ ${#horovod[@]} -gt 0 ] || [ ${#sok[@]} -gt 0 ] || {
  echo "install_builds.sh: neither .gpu/horovod-0.28.1-*.whl nor .gpu/merlin_sok-2.1.0-*.whl is here"; exit 1; }
if [ ${#horovod[@]} -gt 0 ]; then
  python -m pip install -q --no-deps --no-index --force-reinstall "${horovod[0]}"
  python -c "import horovod.tensorflow as hvd; assert hvd.nccl_built(), 'no NCCL'; print('horovod', hvd.__version__, 'NCCL built:', hvd.nccl_built(), 'CUDA:', hvd.cuda_built())"
fi
if [ ${#sok[@]} -gt 0 ]; then
  for lib in libcurand.so.10 libnccl.so.2; do
    [ -e "$libs/$lib" ] && continue
    found=$(find /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" \
              2>/dev/null | head -n 1)
    [ -n "$found" ] || { echo "install_builds.sh: SOK needs $lib, not found on this machine"; exit 1; }
    ln -sf "$found" "$libs/$lib"; echo "install_builds.sh: $lib -> $found"
  done
  python -m pip install -q --no-deps --no-index --force-reinstall "${sok[0]}"
  python -c "import sparse_operation_kit as sok; print('SOK', sok.__version__, 'at', sok.__file__)" 2>&1 | grep -v "^\[SOK INFO\]"
fi
