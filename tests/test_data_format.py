"""data_format.py's file helpers: an atomic write that fails leaves nothing behind and the old
file as it was, the start-up checks of output paths fail where a write would (for root too),
and vocabulary sizes stay within the ids' dtype."""

import errno
import json
import os

import pytest

import data_format as fmt


def test_a_failed_atomic_write_removes_its_temporary_and_keeps_the_old_file(tmp_path,
                                                                             monkeypatch):
    path = tmp_path / "report.json"
    path.write_text('{"old": 1}\n')
    with pytest.raises(TypeError):  # not JSON: fails halfway through the dump
        fmt.write_json_atomic(str(path), {"a": 1, "b": object()})
    assert os.listdir(tmp_path) == ["report.json"] and path.read_text() == '{"old": 1}\n'

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        fmt.write_json_atomic(str(path), {"new": 2})
    assert os.listdir(tmp_path) == ["report.json"] and path.read_text() == '{"old": 1}\n'
    monkeypatch.undo()
    fmt.write_json_atomic(str(path), {"new": 2})
    assert json.load(open(path)) == {"new": 2} and os.listdir(tmp_path) == ["report.json"]


def test_output_checks_fail_where_a_write_would(tmp_path):
    """Paths that fail for root too: under a regular file, in a missing directory, a
    directory where a file goes. Where they pass, they leave only the directories made."""
    (tmp_path / "file.txt").write_text("x")
    for path, error, named in [(tmp_path / "file.txt" / "r.json", NotADirectoryError,
                                tmp_path / "file.txt"),
                               (tmp_path / "missing" / "r.json", FileNotFoundError,
                                tmp_path / "missing"),
                               (tmp_path, IsADirectoryError, tmp_path)]:
        with pytest.raises(error, match=str(named)):
            fmt.check_writable_file(str(path))
    with pytest.raises(NotADirectoryError, match="file.txt"):
        fmt.check_writable_directory(str(tmp_path / "file.txt" / "tb"))
    with pytest.raises(OSError):
        fmt.check_writable_directory("/proc/dlrm_test_output")
    fmt.check_writable_file(str(tmp_path / "r.json"))
    fmt.check_writable_directory(str(tmp_path / "new" / "tb"))
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "new"]
    assert os.listdir(tmp_path / "new") == ["tb"] and os.listdir(tmp_path / "new" / "tb") == []


def test_vocabulary_sizes_fit_the_ids_dtype():
    assert fmt.parse_vocab_sizes(f"[{2**31}, 1]", expected_len=2) == (2**31, 1)
    for bad, entry in [("99999999999999999999", "99999999999999999999"),
                       (f"[1, {2**31 + 1}]", str(2**31 + 1)), ("[1, -3]", "-3")]:
        with pytest.raises(ValueError, match=rf"vocab_sizes\[\d\] is {entry}, expected an "
                                             rf"integer in \[1, 2147483648\]"):
            fmt.parse_vocab_sizes(bad, expected_len=None)
