"""preprocess_criteo.py against a by-hand conversion in plain Python, its bad-input messages,
resuming after a kill, and the round trip through split_bin.py."""

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import ROOT
from criteo import files, parsing, reading, shuffle, vocabulary
import data_format as fmt
import preprocess_criteo as pc
import split_bin

MOD = 40_000_000
# Hex edge cases: both ends of 32 bits, either case, values >= 40M before the modulo (40M itself
# and 80M collide with 00000000 and with missing), 1-7 digit values.
EDGE_HEX = ["00000000", "ffffffff", "FFFFFFFF", "02625a00", "02625A01", "04c4b400", "abcdef12",
            "ABCDEF12", "AbCdEf12", "0", "7", "1a", "02625a0"]
# Small shuffle: 708 train samples -> 7 buckets, scattered 50 at a time.
SHUFFLE = dict(shuffle_memory_bytes=40_000, shuffle_block_rows=50)
FAST = dict(chunk_bytes=7000, block_bytes=2000, progress_stream=None, workers=2, **SHUFFLE)


def _pools(rng):
    """Per feature, the hex strings training draws from (small pools, so values repeat)."""
    pools = []
    for f in range(fmt.NUM_CATEGORICAL):
        size = [2, 5, 40, 200][f % 4]
        pool = ["%08x" % v for v in rng.integers(0, 1 << 32, size)]
        if f % 3 == 0:
            pool += EDGE_HEX
        pools.append(pool)
    return pools


def _make_lines(rng, n, pools, extra=None):
    """n TSV lines (no line end); `extra[f]` values are mixed into feature f when given."""
    lines = []
    for _ in range(n):
        fields = [str(int(rng.random() < 0.25))]
        for _ in range(fmt.NUM_DENSE):
            r = rng.random()
            fields.append("" if r < 0.15 else str(int(rng.integers(-5, 0))) if r < 0.25
                          else "2147483646" if r < 0.26 else str(int(rng.integers(0, 5000))))
        for f in range(fmt.NUM_CATEGORICAL):
            r = rng.random()
            choices = pools[f] if extra is None or r < 0.6 else extra[f]
            fields.append("" if r < 0.1 else choices[int(rng.integers(0, len(choices)))])
        lines.append("\t".join(fields))
    return lines


def _write_days(directory, rng, counts=(230, 301, 177), test_lines=121, gz_days=(1,)):
    """day_0 .. day_{k-1} (train) and day_k (test) in directory; -> {day: list of lines}.
    The test day's first half draws some values never seen in training, its second half
    others again (seen by --vocab=all's vocabulary only)."""
    os.makedirs(directory, exist_ok=True)
    pools = _pools(rng)
    days = {d: _make_lines(rng, n, pools) for d, n in enumerate(counts)}
    first = (test_lines + 1) // 2
    unseen_a = [[f"{0xdead0000 + 16 * f + i:08x}" for i in range(3)] for f in range(26)]
    unseen_b = [[f"{0xbeef0000 + 16 * f + i:08x}" for i in range(3)] for f in range(26)]
    days[len(counts)] = (_make_lines(rng, first, pools, unseen_a)
                         + _make_lines(rng, test_lines - first, pools, unseen_b))
    for d, lines in days.items():
        text = ("\n".join(lines) + "\n").encode()
        if d in gz_days:
            with gzip.open(os.path.join(directory, f"day_{d}.gz"), "wb") as f:
                f.write(text)
        else:
            with open(os.path.join(directory, f"day_{d}"), "wb") as f:
                f.write(text)
    return days


def _by_hand(days, train_days, test_day, vocab):
    """The rules, written out with int(x, 16) and dicts: -> (train rows, test rows, sizes)."""
    def parse(line):
        fields = line.split("\t")
        return (int(fields[0]), [int(x) if x else 0 for x in fields[1:14]],
                [int(x, 16) % MOD if x else 0 for x in fields[14:]])

    rows = {d: [parse(line) for line in lines] for d, lines in days.items()}
    vocab_days = list(train_days) + ([test_day] if vocab == "all" else [])
    ids = []
    for f in range(26):
        values = sorted({r[2][f] for d in vocab_days for r in rows[d]})
        ids.append({v: i for i, v in enumerate(values)})
    sizes = [len(m) + (1 if vocab == "train" else 0) for m in ids]

    def convert(r):
        label, dense, cats = r
        return ([label] + [max(x, 0) for x in dense]
                + [ids[f][v] if v in ids[f] else len(ids[f]) for f, v in enumerate(cats)])

    train = [convert(r) for d in train_days for r in rows[d]]
    n_test = -(-len(rows[test_day]) // 2)
    test = [convert(r) for r in rows[test_day][:n_test]]
    return train, test, sizes


def _read_raw(path):
    return np.fromfile(path, "<i4").reshape(-1, 40).tolist()


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("criteo") / "in"
    days = _write_days(str(directory), np.random.default_rng(5))
    return str(directory), days


@pytest.fixture(scope="module")
def whole(dataset, tmp_path_factory):
    """An uninterrupted run with FAST's options and --vocab=all: -> (out dir, metadata)."""
    out = str(tmp_path_factory.mktemp("whole") / "out")
    return out, pc.preprocess(dataset[0], out, [0, 1, 2], 3, **FAST)


def test_hex_decoding_matches_int_base_16():
    rng = np.random.default_rng(0)
    texts = EDGE_HEX + [""] * 5
    for _ in range(3000):
        digits = "".join(rng.choice(list("0123456789abcdefABCDEF"), int(rng.integers(1, 9))))
        texts.append(digits)
    arr = pa.array([t.encode() for t in texts], pa.binary())
    for sliced in (arr, arr.slice(7, 2000)):  # an array with an offset, as pyarrow may give
        expected = [int(t, 16) % MOD if t else 0 for t in sliced.to_pylist()]
        assert parsing.hash_hex_column(sliced, MOD).tolist() == expected
    # Only 8-digit values and empty ones (Criteo's files): the contiguous fast path.
    eight = [t if len(t) == 8 else "" for t in texts]
    arr = pa.array([t.encode() for t in eight], pa.binary())
    for sliced in (arr, arr.slice(3, 1500), pa.array([b"ffffffff", b"02625A01"], pa.binary())):
        expected = [int(t, 16) % MOD if t else 0 for t in sliced.to_pylist()]
        assert parsing.hash_hex_column(sliced, MOD).tolist() == expected
    for bad in ([b"12", b"12g45678"], [b"1234567g", b""], [b"123456789"], [b" 1234567"]):
        with pytest.raises(parsing.BadBlock):
            parsing.hash_hex_column(pa.array(bad, pa.binary()), MOD)


@pytest.mark.parametrize("vocab", ["all", "train"])
def test_matches_by_hand_conversion(dataset, whole, tmp_path, vocab):
    in_dir, days = dataset
    if vocab == "all":
        out, meta = whole
    else:
        out = str(tmp_path / "out")
        meta = pc.preprocess(in_dir, out, train_days=[0, 1, 2], test_day=3, vocab=vocab,
                             shuffle="none", **FAST)
    out = Path(out)
    # The data holds every case: each edge value, missing fields of each kind, dense values
    # below 0, test values never seen in training (both halves of the test day).
    fields = [line.split("\t") for d in (0, 1, 2) for line in days[d]]
    assert set(EDGE_HEX) <= {x for row in fields for x in row[14:]}
    assert all(any(row[j] == "" for row in fields) for j in range(1, 40))
    assert any(int(x) < 0 for row in fields for x in row[1:14] if x)
    first_half = {x for line in days[3][:61] for x in line.split("\t")[14:]}
    second_half = {x for line in days[3][61:] for x in line.split("\t")[14:]}
    assert any(x.startswith("dead") for x in first_half)
    assert any(x.startswith("beef") for x in second_half)
    train, test, sizes = _by_hand(days, [0, 1, 2], 3, vocab)
    got_train = _read_raw(out / "train_data.bin")
    if vocab == "all":  # shuffled (the default): the same rows, in another order
        assert sorted(got_train) == sorted(train) and got_train != train
    else:
        assert got_train == train
    assert _read_raw(out / "test_data.bin") == test  # the test day keeps its order
    assert meta == json.load(open(out / "preprocess_metadata.json"))
    assert meta["vocab_sizes"] == sizes
    assert meta["train_samples"] == 230 + 301 + 177
    assert meta["test_day_lines"] == 121 and meta["test_samples"] == 61  # ceil(121 / 2)
    assert [i["lines"] for i in meta["inputs"]] == [230, 301, 177, 121]
    assert [i["name"] for i in meta["inputs"]] == ["day_0", "day_1.gz", "day_2", "day_3"]
    assert [i["size_bytes"] for i in meta["inputs"]] == [
        os.path.getsize(os.path.join(in_dir, i["name"])) for i in meta["inputs"]]
    assert meta["hash_mod"] == MOD and meta["matches_criteo_tb"] is False
    assert meta["unseen_id"] == ([s - 1 for s in sizes] if vocab == "train" else None)
    converted = fields + [line.split("\t") for line in days[3][:61]]
    assert sum(meta["dense_negative_clamped_to_0"].values()) == sum(
        1 for row in converted for x in row[1:14] if x and int(x) < 0)
    assert meta["shuffle"]["method"].startswith("total" if vocab == "all" else "none")
    assert sorted(os.listdir(out)) == sorted(["train_data.bin", "test_data.bin",
                                              files.METADATA_NAME, files.VOCAB_NAME])
    # The vocabulary file: id i of feature f is its i-th smallest hashed value.
    mod, values = vocabulary.read_vocabulary(str(out / files.VOCAB_NAME))
    assert mod == MOD and [len(v) for v in values] == meta["distinct_hashed_values"]
    for line, row in zip(days[0][:30], train):
        for f, text in enumerate(line.split("\t")[14:]):
            assert values[f][row[14 + f]] == (int(text, 16) % MOD if text else 0)
    if vocab == "train":  # the test day's unseen values took the reserved id
        test_ids = np.asarray(test)[:, 14:]
        assert (test_ids == np.asarray(sizes) - 1).any(axis=0).all()


@pytest.mark.parametrize("options", [
    dict(workers=1),  # the defaults: one chunk per file, one block per chunk
    dict(workers=2, chunk_bytes=997, block_bytes=100)])  # every line straddles a boundary
def test_workers_and_chunking_do_not_change_the_output(dataset, whole, tmp_path, options):
    a = pc.preprocess(dataset[0], str(tmp_path / "a"), [0, 1, 2], 3, progress_stream=None,
                      **options, **SHUFFLE)
    assert a["vocab_sizes"] == whole[1]["vocab_sizes"]
    for name in ["train_data.bin", "test_data.bin", files.VOCAB_NAME]:
        assert _read_bytes(tmp_path / "a" / name) == _read_bytes(os.path.join(whole[0], name))


def test_round_trip_through_split_bin(dataset, whole, tmp_path):
    in_dir, days = dataset
    raw_dir, meta = whole
    train, _, _ = _by_hand(days, [0, 1, 2], 3, "all")
    split_bin.split(os.path.join(raw_dir, "train_data.bin"), str(tmp_path / "split"),
                    meta["vocab_sizes"], progress_stream=None)
    split_meta = fmt.read_metadata(str(tmp_path / "split"))
    assert split_meta["num_samples"] == len(train)
    expected = np.asarray(_read_raw(os.path.join(raw_dir, "train_data.bin")))
    assert sorted(expected.tolist()) == sorted(train)  # the by-hand rows, shuffled
    got_label = np.fromfile(tmp_path / "split" / fmt.LABEL_FILE, fmt.LABEL_DTYPE)
    np.testing.assert_array_equal(got_label, expected[:, 0])
    got_dense = np.fromfile(tmp_path / "split" / fmt.DENSE_FILE, fmt.DENSE_DTYPE).reshape(-1, 13)
    np.testing.assert_allclose(got_dense.astype(np.float64),
                               np.log(expected[:, 1:14].astype(np.float64) + 3), rtol=2e-3)
    for f in [0, 3, 9, 25]:
        vocab = meta["vocab_sizes"][f]
        got = np.fromfile(tmp_path / "split" / fmt.category_file(f), fmt.category_dtype(vocab))
        np.testing.assert_array_equal(got, expected[:, 14 + f])


def _with_bad_line(in_dir, tmp_path, day, line_index, edit):
    """A copy of in_dir whose day `day` has line `line_index` (0-based) replaced by
    edit(fields) (a list of fields -> the new line text)."""
    bad_dir = tmp_path / "bad_in"
    bad_dir.mkdir()
    for name in os.listdir(in_dir):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(os.path.join(in_dir, name), "rb") as f:
            lines = f.read().decode().split("\n")
        if name.split(".")[0] == f"day_{day}":
            lines[line_index] = edit(lines[line_index].split("\t"))
        with opener(str(bad_dir / name), "wb") as f:
            f.write("\n".join(lines).encode())
    return str(bad_dir)


def _replace(index, value):
    return lambda fields: "\t".join(fields[:index] + [value] + fields[index + 1:])


BAD_LINES = [
    (_replace(16, "xyz12345"), "field 17 (C3) 'xyz12345' is not a hexadecimal number"),
    (_replace(39, "123456789"), "field 40 (C26) '123456789' is not a hexadecimal number"),
    (_replace(20, "12 45678"), "field 21 (C7) '12 45678' is not a hexadecimal"),
    (_replace(25, "-1234567"), "field 26 (C12) '-1234567' is not a hexadecimal"),
    (lambda fields: "\t".join(fields[:-1]), "has 39 tab-separated fields, expected 40"),
    (lambda fields: "\t".join(fields + ["1"]), "has 41 tab-separated fields, expected 40"),
    (_replace(0, "2"), "label '2' is not 0 or 1"),
    (_replace(0, ""), "label is empty (missing)"),
    (_replace(2, "1.5"), "field 3 (I2) '1.5' is not an integer"),
    (_replace(13, "0x10"), "field 14 (I13) '0x10' is not an integer"),
    (_replace(5, "2147483648"), "field 6 (I5) 2147483648 is too large"),
    (lambda fields: "\ufeff" + "\t".join(fields), "contains a UTF-8 byte-order mark"),
    (_replace(5, "99999999999999999999"), "field 6 (I5) 99999999999999999999 is too large"),
    (lambda fields: "\t".join(fields) + "\r", "carriage return"),
    (lambda fields: "", "has 1 tab-separated fields"),
]


@pytest.mark.parametrize("edit,message", BAD_LINES)
def test_every_bad_line_is_caught_and_named(dataset, edit, message):
    """The vectorised checks reject the block, and the line scan names line and field."""
    lines = list(dataset[1][0][:20])
    lines[13] = edit(lines[13].split("\t"))
    buf = ("\n".join(lines) + "\n").encode()
    with pytest.raises(parsing.BadBlock):
        parsing.parse_block(buf, MOD)
    index, offset, problem = parsing.first_bad_line(buf)
    assert index == 13 and offset == len("\n".join(lines[:13])) + 1
    assert message in problem, problem
    good = ("\n".join(lines[:13]) + "\n").encode()
    assert len(parsing.parse_block(good, MOD).label) == 13
    assert parsing.first_bad_line(good) is None


@pytest.mark.parametrize("edit,message", [BAD_LINES[i] for i in (0, 4, 7, 12)])
def test_bad_line_stops_the_run_with_one_line_and_no_output(dataset, tmp_path, capsys, edit,
                                                           message):
    in_dir, _ = dataset
    bad_dir = _with_bad_line(in_dir, tmp_path, 2, 150, edit)
    out = tmp_path / "out"
    rc = pc.main([bad_dir, str(out), "--train_days=0-2", "--test_day=3", "--workers=2",
                  "--chunk_bytes=7000", "--block_bytes=2000", "--progress_seconds=100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1, err
    assert f"{bad_dir}/day_2: line 151 (byte " in errors[0] and message in errors[0], errors[0]
    assert os.listdir(out) == []  # no output, no work directory


def test_bad_line_in_gzip_input_and_cli_exit_status(dataset, tmp_path):
    in_dir, _ = dataset
    bad_dir = _with_bad_line(in_dir, tmp_path, 1, 299, _replace(30, "ghijklmn"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "preprocess_criteo.py"), bad_dir,
                           str(tmp_path / "out"), "--train_days=0-2", "--test_day=3",
                           "--workers=2"], capture_output=True, text=True,
                          timeout=120)  # fail, not hang (multiprocessing.Pool once did here)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"preprocess_criteo.py: error: {bad_dir}/day_1.gz: line 300 "
                                f"(byte "), lines
    assert "of the decompressed stream): field 31 (C17) 'ghijklmn'" in lines[-1]
    assert not any(name.endswith(".bin") for name in os.listdir(tmp_path / "out"))


def _kill_after(in_dir, out_dir, stage, number):
    """Runs preprocess with FAST's options in a fresh session (the shuffle's scatter
    checkpointed every 2 blocks) and SIGKILLs it right after its checkpoint (stage, number)."""
    code = ("import json, os, signal, sys; import "  # run in ROOT: its modules import
            "preprocess_criteo as p; from criteo import shuffle; shuffle.SHUFFLE_SAVE_BLOCKS = 2; "
            "stop = (sys.argv[1], int(sys.argv[2])); kill = lambda stage, number: "
            "os.kill(os.getpid(), signal.SIGKILL) if (stage, number) == stop else None; "
            "p.preprocess(sys.argv[3], sys.argv[4], [0, 1, 2], 3, on_checkpoint=kill, "
            "**json.loads(sys.argv[5]))")
    proc = subprocess.Popen([sys.executable, "-c", code, stage, str(number), in_dir,
                             out_dir, json.dumps(FAST)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=120)
    try:  # the workers die with it (PR_SET_PDEATHSIG); make sure, by this session's id
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, err


PASS_RECORDS = {"vocabulary": "pass1", "convert": "pass2"}  # stage -> its record in state.json


@pytest.mark.parametrize("stage,number", [("vocabulary", 1), ("convert", 1), ("scatter", 4),
                                          ("scatter", 15), ("gather", 2)])
def test_killed_run_resumes_to_identical_output(dataset, whole, tmp_path, stage, number):
    in_dir, _ = dataset
    out = str(tmp_path / "killed")
    _kill_after(in_dir, out, stage, number)
    assert not os.path.exists(os.path.join(out, "train_data.bin"))
    assert not os.path.exists(os.path.join(out, "test_data.bin"))
    state = json.load(open(os.path.join(out, files.WORK_NAME, "state.json")))
    if stage == "scatter":  # killed within the scatter, after its checkpoint of `number` blocks
        assert state["shuffle"]["rows_scattered"] == min(50 * number, 708)  # 15 blocks in all
        assert not state["shuffle"]["scatter_complete"]
    elif stage == "gather":  # killed within the gather, after bucket 2
        assert state["shuffle"]["buckets_done"] == 3
    else:
        assert number in state[PASS_RECORDS[stage]]["days_done"]
    # A rerun without --overwrite resumes; days already done are not redone.
    redone, log = [], io.StringIO()
    pc.preprocess(in_dir, out, [0, 1, 2], 3, progress_stream=log,
                  on_checkpoint=lambda *checkpoint: redone.append(checkpoint),
                  **{k: v for k, v in FAST.items() if k != "progress_stream"})
    assert "resuming: pass 1 days done" in log.getvalue()
    done_before = {(done_stage, day) for done_stage, record in PASS_RECORDS.items()
                   for day in state[record]["days_done"]}
    assert done_before and not done_before & set(redone)
    if stage == "gather":  # the buckets already written are not written again
        assert min(n for s, n in redone if s == "gather") == 3
    for name in ["train_data.bin", "test_data.bin", files.VOCAB_NAME]:
        assert _read_bytes(os.path.join(out, name)) == _read_bytes(os.path.join(whole[0], name))


def test_a_rerun_removes_the_temporaries_a_killed_run_left(dataset, whole, tmp_path):
    """A run killed while writing state.json, the vocabulary or the metadata leaves its
    *.tmp-PID; the next run removes those of processes that no longer run, says so, and keeps
    another live process's."""
    in_dir, _ = dataset
    out = str(tmp_path / "killed")
    _kill_after(in_dir, out, "vocabulary", 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID no longer runs
    alive = os.getppid()
    work = os.path.join(out, files.WORK_NAME)
    leftovers = [os.path.join(work, f"state.json.tmp-{dead.pid}"),
                 os.path.join(work, f"vocabulary.bin.tmp-{dead.pid}"),
                 os.path.join(out, f"{files.METADATA_NAME}.tmp-{dead.pid}")]
    live = os.path.join(work, f"state.json.tmp-{alive}")
    for path in leftovers + [live]:
        Path(path).write_bytes(b"")
    log, kept = io.StringIO(), []
    pc.preprocess(in_dir, out, [0, 1, 2], 3, progress_stream=log,
                  on_checkpoint=lambda *checkpoint: kept.append(os.path.exists(live)),
                  **{k: v for k, v in FAST.items() if k != "progress_stream"})
    for path in leftovers:
        assert (f"preprocess_criteo: removed {path}, left by process {dead.pid} that no longer "
                f"runs") in log.getvalue()
    assert kept and all(kept)  # the live process's, while the run went on
    assert not os.path.exists(work)  # then the finished run removed its work directory
    assert sorted(os.listdir(out)) == sorted(os.listdir(whole[0]))
    for name in ["train_data.bin", "test_data.bin", files.VOCAB_NAME]:
        assert _read_bytes(os.path.join(out, name)) == _read_bytes(os.path.join(whole[0], name))


def test_interrupted_run_with_changed_input_or_options(dataset, tmp_path):
    in_dir, days = dataset
    copy_dir = tmp_path / "in"
    copy_dir.mkdir()
    for name in os.listdir(in_dir):
        (copy_dir / name).write_bytes(_read_bytes(os.path.join(in_dir, name)))
    out = str(tmp_path / "out")

    def stop(stage, number):
        if (stage, number) == ("convert", 1):
            raise RuntimeError("stop here")
    with pytest.raises(RuntimeError):
        pc.preprocess(str(copy_dir), out, [0, 1, 2], 3, on_checkpoint=stop, **FAST)
    with pytest.raises(fmt.InputError, match="other options"):
        pc.preprocess(str(copy_dir), out, [0, 1, 2], 3, vocab="train", **FAST)
    # day_0 changes: the unfinished run's vocabulary is stale, the rerun starts over.
    lines = days[0][:100]
    (copy_dir / "day_0").write_text("\n".join(lines) + "\n")
    log = io.StringIO()
    meta = pc.preprocess(str(copy_dir), out, [0, 1, 2], 3, progress_stream=log,
                         **{k: v for k, v in FAST.items() if k != "progress_stream"})
    assert "inputs changed since the unfinished run (day_0): starting over" in log.getvalue()
    train, test, sizes = _by_hand({**days, 0: lines}, [0, 1, 2], 3, "all")
    assert meta["vocab_sizes"] == sizes
    assert sorted(_read_raw(os.path.join(out, "train_data.bin"))) == sorted(train)
    # A finished output is not replaced without --overwrite.
    with pytest.raises(fmt.InputError, match="already exists"):
        pc.preprocess(str(copy_dir), out, [0, 1, 2], 3, **FAST)
    pc.preprocess(str(copy_dir), out, [0, 1], 3, overwrite=True, **FAST)
    assert json.load(open(os.path.join(out, files.METADATA_NAME)))["train_days"] == [0, 1]


def test_option_and_path_errors(dataset, tmp_path):
    in_dir, _ = dataset
    with pytest.raises(fmt.InputError, match="no day_7 or day_7.gz"):
        pc.preprocess(in_dir, str(tmp_path / "o"), [0, 7], 3, **FAST)
    with pytest.raises(fmt.InputError, match="also a train day"):
        pc.preprocess(in_dir, str(tmp_path / "o"), [0, 3], 3, **FAST)
    assert pc.parse_days("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    with pytest.raises(fmt.InputError):
        pc.parse_days("3-1")
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "day_0").write_text("")
    (tmp_path / "both" / "day_0.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(fmt.InputError, match="both day_0 and day_0.gz"):
        reading.find_inputs(str(tmp_path / "both"), [0])


def _positions(rows, by_hand):
    """-> int array: position in rows of each by-hand row (every row exactly once)."""
    index = {tuple(r): i for i, r in enumerate(rows)}
    assert len(index) == len(rows) == len(by_hand)  # distinct rows: positions are defined
    return np.asarray([index[tuple(r)] for r in by_hand])


def test_shuffle_is_a_seeded_permutation_spread_over_the_file(dataset, whole, tmp_path):
    in_dir, days = dataset
    train, _, _ = _by_hand(days, [0, 1, 2], 3, "all")
    got = _read_raw(os.path.join(whole[0], "train_data.bin"))
    where = _positions(got, train)  # raises KeyError if a row is not a by-hand row
    assert sorted(where.tolist()) == list(range(len(train)))
    assert whole[1]["shuffle"]["seed"] == 123 and whole[1]["shuffle"]["buckets"] == 7
    # Every day's samples over the whole file: each quarter holds >= 10% of each day (25%
    # expected; the seed is fixed, so this is deterministic), and input order is gone.
    first = 0
    for n in (230, 301, 177):
        quarters = np.bincount(where[first:first + n] * 4 // len(train), minlength=4)
        assert (quarters >= 0.1 * n).all(), quarters
        first += n
    assert abs(np.corrcoef(np.arange(len(train)), where)[0, 1]) < 0.15
    # Another seed: the same rows in another order.
    other = pc.preprocess(in_dir, str(tmp_path / "s124"), [0, 1, 2], 3, seed=124, **FAST)
    got_124 = _read_raw(tmp_path / "s124" / "train_data.bin")
    assert other["shuffle"]["seed"] == 124
    assert sorted(got_124) == sorted(train) and got_124 != got


def test_shuffle_places_a_sample_uniformly(tmp_path):
    """The two passes alone, 6 samples in 3 buckets over 600 seeds: each sample lands at each
    position ~100 times (binomial sd 9; the bounds are 4.5 sd)."""
    rows = np.arange(6 * 40, dtype="<i4").reshape(6, 40)
    counts = np.zeros((6, 6), np.int64)  # [sample, position]
    for seed in range(600):
        work = files.WorkDir(str(tmp_path / f"s{seed}"))
        os.makedirs(work.dir)
        rows.tofile(work.train_partial)
        state = {"options": {"seed": seed, "shuffle_block_rows": 1,
                             "shuffle_memory_bytes": 750}}
        shuffle.shuffle_train(work, state, 6, None, 1.0)
        assert state["shuffle"]["buckets"] == 3
        out = np.fromfile(work.train_partial, "<i4").reshape(6, 40)
        counts[out[:, 0] // 40, np.arange(6)] += 1
        assert sorted(os.listdir(work.dir)) == ["state.json", "train_data.bin.partial"]
    assert (counts.sum(axis=0) == 600).all()
    assert counts.min() >= 60 and counts.max() <= 140, counts


@pytest.mark.parametrize("name,content", [
    ("day_2", b""), ("day_2.gz", b""), ("day_2.gz", gzip.compress(b""))])
def test_an_empty_day_is_refused_unless_allowed(dataset, tmp_path, name, content):
    in_dir, days = dataset
    copy_dir = tmp_path / "in"
    copy_dir.mkdir()
    for other in os.listdir(in_dir):
        if not other.startswith("day_2"):
            (copy_dir / other).write_bytes(_read_bytes(os.path.join(in_dir, other)))
    (copy_dir / name).write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(fmt.InputError, match=rf"{copy_dir}/{name}: holds no lines \(a failed "
                                            rf"download\?\); pass --allow_empty_days"):
        pc.preprocess(str(copy_dir), str(out), [0, 1, 2], 3, **FAST)
    assert os.listdir(out) == []
    meta = pc.preprocess(str(copy_dir), str(out), [0, 1, 2], 3, allow_empty_days=True, **FAST)
    assert meta["train_samples"] == 230 + 301 and meta["inputs"][2]["lines"] == 0


@pytest.mark.parametrize("chunk_bytes", [7000, 1 << 20])
@pytest.mark.parametrize("line_index", [0, 99])
def test_a_byte_order_mark_is_refused_at_any_line_and_chunking(dataset, tmp_path, chunk_bytes,
                                                               line_index):
    in_dir, _ = dataset
    bad_dir = _with_bad_line(in_dir, tmp_path, 0, line_index,
                             lambda fields: "\ufeff" + "\t".join(fields))
    with pytest.raises(fmt.InputError, match=rf"{bad_dir}/day_0: line {line_index + 1} "
                                            rf"\(byte \d+\): contains a UTF-8 byte-order mark"):
        pc.preprocess(bad_dir, str(tmp_path / "out"), [0, 1, 2], 3,
                      **{**FAST, "chunk_bytes": chunk_bytes, "block_bytes": chunk_bytes})


def test_a_directory_day_and_a_truncated_gz_are_named(dataset, tmp_path):
    in_dir, _ = dataset
    (tmp_path / "dirs" / "day_5").mkdir(parents=True)
    with pytest.raises(fmt.InputError, match=rf"{tmp_path}/dirs/day_5: is a directory, expected "
                                            rf"the day's TSV file"):
        reading.find_inputs(str(tmp_path / "dirs"), [5])
    copy_dir = tmp_path / "in"
    copy_dir.mkdir()
    for name in os.listdir(in_dir):
        data = _read_bytes(os.path.join(in_dir, name))
        if name == "day_1.gz":
            data = data[:len(data) * 2 // 3]
            reached = len(zlib.decompressobj(31).decompress(data))  # what zlib gets out of it
            assert reached > 0
        (copy_dir / name).write_bytes(data)
    with pytest.raises(fmt.InputError, match=rf"{copy_dir}/day_1.gz: bad gzip data after "
                                            rf"{reached} decompressed bytes"):
        pc.preprocess(str(copy_dir), str(tmp_path / "out"), [0, 1, 2], 3, **FAST)
