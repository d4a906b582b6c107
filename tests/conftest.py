"""Shared test helpers: tiny raw files, horovodrun (pytest.ini puts the repo root and tests/
on sys.path)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The 26 small vocabularies of the tests that train on split files (any size from 2 to 1000).
SMALL_VOCAB = [7, 300, 41, 2, 90, 1000] + [13, 29, 3, 55, 120, 17, 9, 64, 200, 31, 5, 77, 11,
                                           150, 23, 8, 44, 6, 19, 250]
# The tests compare float32 against float64 references at float32 tolerances: on a GPU, no
# TF32 in cuBLAS (this process and every rank it starts). test_custom_interact turns TF's own
# TF32 switch on where it tests the op's TF32 path.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
# The tests that run TF in this process must leave the GPU to the ranks they start.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def write_raw(path, label, dense, categorical):
    """label [n], dense [n, 13], categorical [n, 26] ints -> HugeCTR raw file at path."""
    raw = np.concatenate([np.asarray(label).reshape(-1, 1), dense, categorical], axis=1)
    raw.astype("<i4").tofile(path)
    return raw.astype(np.int64)


def pairwise_auc(labels, scores):
    """By-hand AUC: the fraction of (positive, negative) pairs ordered right, ties 1/2."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


def horovodrun(num_ranks, script, *args, timeout=600):
    """Runs `python script args` on num_ranks local Gloo ranks; returns the CompletedProcess.
    More than one rank run on the CPU: on a GPU machine they would all open the same GPU,
    which a Horovod built with NCCL refuses (one NCCL rank per GPU)."""
    cmd = launch.horovodrun(num_ranks, sys.executable, script, *args, gloo=True)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    if num_ranks > 1:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def main_command(*flags, num_ranks=2):
    """-> (argv, environment) of main.py with flags on num_ranks Gloo ranks (CPU ranks if more
    than one, as horovodrun's), to run in ROOT."""
    cmd = launch.horovodrun(num_ranks, sys.executable, os.path.join(ROOT, "main.py"), *flags,
                            gloo=True, wrapper=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if num_ranks > 1:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return cmd, env


def run_main(*flags, num_ranks=2, timeout=900):
    """main.py with flags on num_ranks Gloo ranks (main_command) -> the CompletedProcess,
    whatever its exit status."""
    cmd, env = main_command(*flags, num_ranks=num_ranks)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_main_alone(*flags, timeout=300):
    """main.py with flags in one process, no launcher -> the CompletedProcess (stderr into
    stdout, so the last line printed is the last of .stdout)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *map(str, flags)],
                          cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def _build_ops(package):
    """Builds a package's op library by its Makefile's default: the CUDA build where nvcc is
    found (then the GPU kernels are tested on every GPU TF lists), else CPU-only; make redoes
    only stale parts."""
    proc = subprocess.run(["make", "-s", "-C", os.path.join(ROOT, package),
                           f"PYTHON={sys.executable}"], capture_output=True, text=True)
    assert proc.returncode == 0, f"building {package} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def built_custom_interact():
    """The custom_interact module with its op library built."""
    _build_ops("custom_interact")
    import custom_interact
    return custom_interact


@pytest.fixture(scope="session", autouse=True)
def built_embedding_ops():
    """The embedding_ops module with its op library built: the tf backend uses it by default,
    in this process and in every rank a test starts."""
    _build_ops("embedding_ops")
    import embedding_ops
    return embedding_ops


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
