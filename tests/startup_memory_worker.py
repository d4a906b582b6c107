"""Run by test_embedding.py in a fresh process: the peak host memory of building one tf-backend
table of 1 GiB (one rank). Prints JSON {"table_bytes", "rss_before", "peak_after"}."""

import json
import resource

import horovod.tensorflow as hvd
import tensorflow as tf

import embedding

hvd.init()
VOCAB_SIZES, DIM = [3_000_000, 1_194_304], 64  # 4,194,304 rows x 64 x fp32 = 1 GiB
embedding.create_embedding("tf", [10, 20], DIM)  # TF's runtime and allocator up first
with open("/proc/self/statm") as f:
    rss_before = int(f.read().split()[1]) * resource.getpagesize()
tables = embedding.create_embedding("tf", VOCAB_SIZES, DIM)
peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"table_bytes": int(tf.size(tables.table)) * 4, "rss_before": rss_before,
                  "peak_after": peak_after,
                  "checksum_rows": float(tf.reduce_sum(tables.table[-1]))}))
