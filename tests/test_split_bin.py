"""split_bin.py against an independent numpy decoding of the raw file, and its bad-input cases."""

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, write_raw
import data_format as fmt
import split_bin

VOCAB = [3, 127, 128, 129, 32767, 32768, 32769, 40000000] + [50] * 18


def _random_raw(rng, n, vocab=VOCAB):
    label = rng.integers(0, 2, n)
    dense = rng.integers(-2, 1000, (n, fmt.NUM_DENSE))
    categorical = (rng.random((n, len(vocab))) * np.asarray(vocab)).astype(np.int64)
    return label, dense, categorical


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_round_trip_against_numpy_decoding(tmp_path, rng):
    label, dense, categorical = _random_raw(rng, 1000)
    # Edge values: ids at vocab - 1 and 0, zeros, the smallest allowed and the largest dense.
    categorical[0] = np.asarray(VOCAB) - 1
    categorical[1] = 0
    dense[0] = np.iinfo(np.int32).max
    dense[1] = 0
    dense[2] = fmt.DENSE_MIN
    raw_path = tmp_path / "train_data.bin"
    write_raw(raw_path, label, dense, categorical)
    digest = _digest(raw_path)

    # Chunks and L2 blocks that do not divide the sample count.
    meta = split_bin.split(str(raw_path), str(tmp_path / "out"), VOCAB, chunk_samples=333,
                           block_rows=64, progress_stream=None)

    out = tmp_path / "out"
    raw = np.fromfile(raw_path, dtype="<i4").reshape(-1, 40)  # independent decoding
    assert meta == json.load(open(out / "metadata.json"))
    assert meta["num_samples"] == 1000 and meta["format_version"] == fmt.FORMAT_VERSION
    assert meta["vocab_sizes"] == VOCAB
    assert meta["dense_transform"] == "log(x + 3)"
    assert meta["source"] == {"name": "train_data.bin", "size_bytes": 160 * 1000}
    np.testing.assert_array_equal(np.fromfile(out / "label.bin", np.int8), raw[:, 0])
    expected_dense = np.log(raw[:, 1:14].astype(np.float64) + 3)
    got_dense = np.fromfile(out / "dense.bin", np.float16).reshape(-1, 13)
    np.testing.assert_allclose(got_dense.astype(np.float64), expected_dense, rtol=1e-3, atol=0)
    assert got_dense[2].max() == 0.0  # log(-2 + 3)
    expected_dtypes = ["int8", "int8", "int8", "int16", "int16", "int16", "int32", "int32"]
    for f in range(26):
        dtype = meta["files"][f"category_{f}.bin"]["dtype"]
        if f < len(expected_dtypes):
            assert dtype == expected_dtypes[f], f
        ids = np.fromfile(out / f"category_{f}.bin", dtype)
        np.testing.assert_array_equal(ids, raw[:, 14 + f])
    assert _digest(raw_path) == digest
    assert sorted(os.listdir(tmp_path)) == ["out", "train_data.bin"]  # no temporaries left


def _run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "split_bin.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_size_not_multiple_of_160(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * (160 * 3 + 17))
    proc = _run_cli(path, tmp_path / "out", "--vocab_sizes=criteo_tb")
    assert proc.returncode != 0
    assert str(path) in proc.stderr and "497" in proc.stderr and "remainder 17" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [-1, 50, 2**31 - 1])
def test_id_out_of_range_names_feature_sample_and_value(tmp_path, rng, value):
    label, dense, categorical = _random_raw(rng, 900)
    categorical[777, 20] = value  # feature 20 has vocab 50; sample 777 is in the third chunk
    raw_path = tmp_path / "raw.bin"
    write_raw(raw_path, label, dense, categorical)
    with pytest.raises(split_bin.InputError) as err:
        split_bin.split(str(raw_path), str(tmp_path / "out"), VOCAB, chunk_samples=300,
                        progress_stream=None)
    message = str(err.value)
    assert "sample 777" in message and "feature 20" in message and f"is {value}" in message
    assert "[0, 50)" in message and str(raw_path) in message
    assert sorted(os.listdir(tmp_path)) == ["raw.bin"]  # the partial output is gone


def test_bad_label_and_dense(tmp_path, rng):
    label, dense, categorical = _random_raw(rng, 10)
    label[4] = 2
    write_raw(tmp_path / "l.bin", label, dense, categorical)
    with pytest.raises(split_bin.InputError, match="sample 4: label is 2"):
        split_bin.split(str(tmp_path / "l.bin"), str(tmp_path / "o"), VOCAB, progress_stream=None)
    label[4] = 1
    dense[6, 3] = -3
    write_raw(tmp_path / "d.bin", label, dense, categorical)
    with pytest.raises(split_bin.InputError, match="sample 6: dense feature 3 is -3"):
        split_bin.split(str(tmp_path / "d.bin"), str(tmp_path / "o"), VOCAB, progress_stream=None)
    assert not (tmp_path / "o").exists()


def test_cli_wrong_vocab_length_and_existing_out_dir(tmp_path, rng):
    write_raw(tmp_path / "raw.bin", *_random_raw(rng, 20))
    proc = _run_cli(tmp_path / "raw.bin", tmp_path / "out", "--vocab_sizes=1,2,3")
    assert proc.returncode != 0 and "3 entries, expected 26" in proc.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    vocab = json.dumps(VOCAB)
    proc = _run_cli(tmp_path / "raw.bin", tmp_path / "out", f"--vocab_sizes={vocab}")
    assert proc.returncode != 0 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    proc = _run_cli(tmp_path / "raw.bin", tmp_path / "out", f"--vocab_sizes={vocab}", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(tmp_path / "out" / "metadata.json"))["num_samples"] == 20
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_parse_vocab_sizes_never_evaluates():
    assert fmt.parse_vocab_sizes("criteo_tb") == fmt.CRITEO_TB_VOCAB_SIZES
    assert sum(fmt.parse_vocab_sizes("criteo_tb")) == 187767399
    assert fmt.parse_vocab_sizes("[1, 2]", expected_len=2) == (1, 2)
    assert fmt.parse_vocab_sizes(" 1,2,3 ", expected_len=3) == (1, 2, 3)
    for bad in ["__import__('os').getcwd()", "[1, 2.5]", "[0, 1]", "[true, 1]", "1,,2"]:
        with pytest.raises(ValueError, match="vocab_sizes"):
            fmt.parse_vocab_sizes(bad, expected_len=None)


def test_overwrite_never_deletes_the_input(tmp_path, rng):
    write_raw(tmp_path / "raw.bin", *_random_raw(rng, 10))
    digest = _digest(tmp_path / "raw.bin")
    for out_dir in [tmp_path, tmp_path / "raw.bin"]:
        with pytest.raises(split_bin.InputError, match="inside OUT_DIR|not a directory"):
            split_bin.split(str(tmp_path / "raw.bin"), str(out_dir), VOCAB, overwrite=True,
                            progress_stream=None)
    assert _digest(tmp_path / "raw.bin") == digest
    assert sorted(os.listdir(tmp_path)) == ["raw.bin"]


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "split_bin.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_cli_says_what_is_wrong_with_the_paths_the_first_time(tmp_path, rng):
    write_raw(tmp_path / "raw.bin", *_random_raw(rng, 10))
    (tmp_path / "a_dir").mkdir()
    proc = _cli(tmp_path / "a_dir", tmp_path / "out", "--vocab_sizes=" + json.dumps(VOCAB))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"split_bin.py: error: {tmp_path / 'a_dir'}: is a directory; "
                                   f"expected the raw binary file (e.g. train_data.bin)")
    (tmp_path / "a_file").write_text("mine")
    for extra in [[], ["--overwrite"]]:  # the same answer with and without --overwrite
        proc = _cli(tmp_path / "raw.bin", tmp_path / "a_file", "--vocab_sizes=" + json.dumps(VOCAB),
                    *extra)
        assert proc.returncode == 2
        assert "a_file: is a file, not a directory" in proc.stderr, proc.stderr
        assert "--overwrite" not in proc.stderr.split("not a directory")[0]
    assert (tmp_path / "a_file").read_text() == "mine"


def test_a_rerun_removes_what_a_killed_run_left(tmp_path, rng):
    write_raw(tmp_path / "raw.bin", *_random_raw(rng, 10))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID no longer runs
    alive = os.getppid()  # a process that runs (not this one: its name is taken by the split)
    for name in [f".out.partial-{dead.pid}", f".out.old-{dead.pid}", f".out.partial-{alive}",
                 f".other.partial-{dead.pid}"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "label.bin").write_bytes(b"\0" * 10)
    messages = io.StringIO()
    split_bin.split(str(tmp_path / "raw.bin"), str(tmp_path / "out"), VOCAB,
                    progress_stream=messages)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [".other.partial-%d" % dead.pid, f".out.partial-{alive}", "out", "raw.bin"])
    for name in [f".out.partial-{dead.pid}", f".out.old-{dead.pid}"]:
        assert (f"split_bin: removed {tmp_path / name}, left by process {dead.pid} that no "
                f"longer runs") in messages.getvalue()
