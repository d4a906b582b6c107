"""OUT_DIR's files: the outputs' names, and the work directory OUT_DIR/.preprocess_criteo/ that
makes a run resumable (state.json, the vocabulary checkpoint, the partial outputs, the
shuffle's buckets); the inputs' fingerprints, and the temporaries a killed run left.
"""

import json
import os
import re

import data_format as fmt

TRAIN_NAME, TEST_NAME = "train_data.bin", "test_data.bin"
METADATA_NAME = "preprocess_metadata.json"
VOCAB_NAME = "preprocess_vocabulary.bin"
OUTPUT_NAMES = (TRAIN_NAME, TEST_NAME, METADATA_NAME, VOCAB_NAME)
WORK_NAME = ".preprocess_criteo"


class WorkDir:
    """The work directory of OUT_DIR: the paths in it, and state.json."""

    def __init__(self, out_dir):
        self.dir = os.path.join(out_dir, WORK_NAME)
        self.state_path = os.path.join(self.dir, "state.json")
        self.vocab_path = os.path.join(self.dir, "vocabulary.bin")
        self.train_partial = os.path.join(self.dir, TRAIN_NAME + ".partial")
        self.test_partial = os.path.join(self.dir, TEST_NAME + ".partial")
        self.train_shuffled = os.path.join(self.dir, TRAIN_NAME + ".shuffled")

    def bucket_path(self, bucket):
        """The shuffle's bucket file number `bucket`."""
        return os.path.join(self.dir, f"shuffle_bucket_{bucket:05d}.bin")

    def load(self):
        """-> state.json's contents, or None if there is none."""
        if not os.path.isfile(self.state_path):
            return None
        with open(self.state_path) as f:
            return json.load(f)

    def save(self, state):
        """Writes state.json (atomically)."""
        fmt.write_json_atomic(self.state_path, state)


def fingerprint(path):
    """An input file's name, size and mtime: a rerun resumes only if they are unchanged."""
    st = os.stat(path)
    return {"name": os.path.basename(path), "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def remove_dead_temporaries(out_dir, work, stream):
    """Removes the *.tmp-PID files of atomic writes (metadata, state, vocabulary) that a
    killed run left in out_dir and the WorkDir (where the PID no longer runs), saying so."""
    leftovers = [(out_dir, rf"{re.escape(METADATA_NAME)}\.tmp-(\d+)"),
                 (work.dir, r"(?:state\.json|vocabulary\.bin)\.tmp-(\d+)")]
    for directory, pattern in leftovers:
        if os.path.isdir(directory):
            fmt.remove_dead_leftovers(directory, pattern, "preprocess_criteo", stream)
