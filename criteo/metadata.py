"""preprocess_metadata.json: a finished run's rules, vocabulary sizes, sample counts, inputs,
outputs, order (the shuffle) and options."""

import numpy as np

import data_format as fmt
from criteo import parsing
from criteo.files import TEST_NAME, TRAIN_NAME, VOCAB_NAME
from criteo.workers import DENSE_FLOOR

MISSING_HASH = 0  # the hashed value of a missing categorical field (the reference's "0")

RULES = {
    "label": "'0' or '1'; anything else, empty included, is an error",
    "categorical": "hashed = int(field, 16) % hash_mod (1-8 hex digits, either case); "
                   "missing (empty) -> hashed 0, shared with genuine values = 0 mod hash_mod "
                   "(MLPerf reference: empty -> '0')",
    "ids": "per feature, id = rank of the hashed value among the vocabulary's values in "
           "ascending order",
    "vocabulary": "vocab=all: values of the train days and the whole test day, vocab_size = "
                  "distinct values (MLPerf reference); vocab=train: train days only, a test "
                  "value unseen in training -> reserved id vocab_size - 1, vocab_size = "
                  "distinct + 1",
    "dense": "missing -> 0; stored = max(x, 0), no bias (MLPerf reference data_utils.py "
             "processCriteoAdData; HugeCTR dlrm_raw_utils.h); negatives counted; non-integer "
             "or int32 overflow is an error",
    "split": "train = all lines of the train days in day order; test = the first ceil(L/2) "
             "lines of the test day (MLPerf reference numpy_to_binary midpoint)",
    "order": "shuffle=total (default): the train samples in a uniform random permutation "
             "from the seed (MLPerf reference: data_utils.py concatCriteoAdData, "
             "--data-randomize=total); the test samples in file order; shuffle=none: train "
             "days in order, lines in file order",
}


def shuffle_metadata(state):
    """The metadata's record of the train samples' order: method, seed, bucket count."""
    options = state["options"]
    if options["shuffle"] == "none":
        return {"method": "none (days in order, lines in file order)"}
    return {"method": "total: uniform random permutation of the train samples, two-pass "
                      "bucketed (Fisher-Yates-Rao): bucket of each sample drawn uniformly, "
                      "each bucket permuted in memory, buckets concatenated",
            "seed": options["seed"], "buckets": state["shuffle"]["buckets"],
            "memory_bytes": options["shuffle_memory_bytes"],
            "block_rows": options["shuffle_block_rows"],
            "generator": f"numpy {np.__version__} default_rng (PCG64); bucket draws "
                         f"default_rng([seed, 0, block]), permutations "
                         f"default_rng([seed, 1, bucket])"}


def _outputs(counts):
    """The metadata's description of the output files."""
    return {TRAIN_NAME: {"samples": counts.train_samples,
                         "size_bytes": counts.train_samples * fmt.RAW_BYTES_PER_SAMPLE},
            TEST_NAME: {"samples": counts.test_samples,
                        "size_bytes": counts.test_samples * fmt.RAW_BYTES_PER_SAMPLE},
            VOCAB_NAME: {"layout": "magic b'CRTOVOC1', uint64 hash_mod, 26 uint64 counts, "
                                   "then per feature its sorted <u4 hashed values; id i of "
                                   "feature f = its i-th value"}}


def build_metadata(options, state, counts, vocabularies, timings):
    """-> the metadata dict of a finished run: options (pipeline.Options), state (the work
    directory's, pass 2 and the shuffle complete), counts (pipeline.SampleCounts),
    vocabularies (pipeline.Vocabularies), timings (name -> seconds of this run's steps)."""
    clamped = np.zeros(fmt.NUM_DENSE, np.int64)  # negative dense values, over the days
    for per_day in state["pass2"]["clamped"].values():
        clamped += np.asarray(per_day, np.int64)
    return {
        "format": "HugeCTR raw binary: 160 bytes per sample, 40 little-endian int32 "
                  "(label, 13 dense, 26 categorical ids in [0, vocab_size))",
        "tool": "preprocess_criteo.py",
        "rules": RULES,
        "hash_mod": options.hash_mod,
        "missing_categorical_hashed_value": MISSING_HASH,
        "dense_floor": DENSE_FLOOR,
        "vocab": options.vocab,
        "vocab_days": list(options.vocab_days),
        "train_days": list(options.train_days),
        "test_day": options.test_day,
        "vocab_sizes": vocabularies.sizes,
        "distinct_hashed_values": list(vocabularies.distinct),
        "unseen_id": ([int(c) for c in vocabularies.distinct] if options.vocab == "train"
                      else None),
        "matches_criteo_tb": tuple(vocabularies.sizes) == fmt.CRITEO_TB_VOCAB_SIZES,
        "train_samples": counts.train_samples,
        "test_samples": counts.test_samples,
        "test_day_lines": counts.test_lines,
        "dense_negative_clamped_to_0": {parsing.FIELD_NAMES[1 + j]: int(c)
                                        for j, c in enumerate(clamped) if c},
        "inputs": [dict(state["inputs"][str(d)], day=d, lines=counts.day_lines[d])
                   for d in options.all_days],
        "outputs": _outputs(counts),
        "shuffle": shuffle_metadata(state),
        "options": {"chunk_bytes": options.chunk_bytes, "block_bytes": options.block_bytes},
        "timings_last_run_s": {k: round(v, 3) for k, v in timings.items()},
    }
