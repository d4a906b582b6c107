#!/usr/bin/env bash
# On the GPU machine, after bash .gpu/boot.sh: installs the builds carried in .gpu/ into the
# pack's venv and checks them: Horovod with NCCL (gpu/build_horovod_nccl.sh) over the pack's
# Gloo-only one, SOK 2.1.0 (gpu/build_sok.sh), and nvtx's wheel from PyPI
# (pip download nvtx==0.2.13 --no-deps -d .gpu). The pack's venv has no pip: a wheel is
# unpacked into site-packages (both are plain wheels: packages, no scripts). SOK's libraries
# need libcurand.so.10 (CUDA 13's cuRAND) and libnccl.so.2 at load time (the first found on
# this machine is linked into /opt/dlrm-gpu/libs, on env.sh's LD_LIBRARY_PATH), and the
# driver's libcuda.so.1, which gpu/build_sok.sh makes them name as needed.
#
#   bash gpu/install_builds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source /opt/dlrm-gpu/env.sh
libs=/opt/dlrm-gpu/libs
site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
install_wheel() {  # wheel package: replaces site-packages/package and its dist-info
  rm -rf "$site/$2" "$site"/$(basename "$1" | cut -d- -f1-2).dist-info
  python -m zipfile -e "$1" "$site"
}
shopt -s nullglob
horovod=(.gpu/horovod-0.28.1-*.whl) sok=(.gpu/merlin_sok-2.1.0-*.whl) nvtx=(.gpu/nvtx-*.whl)
if [ ${#nvtx[@]} -gt 0 ]; then  # NVIDIA's NVTX bindings (trainer.Phases), from PyPI
  install_wheel "${nvtx[0]}" nvtx
  python -c "import nvtx; print('nvtx', nvtx.__version__ if hasattr(nvtx, '__version__') else '')"
fi
[ ${#horovod[@]} -gt 0 ] || [ ${#sok[@]} -gt 0 ] || {
  echo "install_builds.sh: neither .gpu/horovod-0.28.1-*.whl nor .gpu/merlin_sok-2.1.0-*.whl is here"; exit 1; }
if [ ${#horovod[@]} -gt 0 ]; then
  install_wheel "${horovod[0]}" horovod
  python -c "import horovod.tensorflow as hvd; assert hvd.nccl_built(), 'no NCCL'; import horovod; print('horovod', horovod.__version__, 'NCCL built:', hvd.nccl_built(), 'CUDA:', hvd.cuda_built())"
fi
if [ ${#sok[@]} -gt 0 ]; then
  for lib in libcurand.so.10 libnccl.so.2; do
    [ -e "$libs/$lib" ] && continue
    found=$(find /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" \
              2>/dev/null | head -n 1)
    [ -n "$found" ] || { echo "install_builds.sh: SOK needs $lib, not found on this machine"; exit 1; }
    ln -sf "$found" "$libs/$lib"; echo "install_builds.sh: $lib -> $found"
  done
  install_wheel "${sok[0]}" sparse_operation_kit
  python -c "import sparse_operation_kit as sok; print('SOK', sok.__version__, 'at', sok.__file__, 'patches:', getattr(sok._version, 'DLRM_PATCHES', 'none (gpu/build_sok.sh applies gpu/sok_patches/)'))" 2>&1 | grep -v "^\[SOK INFO\]"
fi
