"""Horovod's collectives on GPU tensors: values against numpy, and which backend ran them.

    HOROVOD_TIMELINE=/tmp/timeline.json horovodrun -np N python3 -m tools.nccl_check

Each rank puts rank-dependent tensors on its GPU and runs hvd.alltoall (uneven splits, as the
tf backend's exchange), hvd.allreduce (sum) and hvd.allgather; the results are checked against
numpy. Rank 0 then reads Horovod's timeline and prints the activities it recorded (NCCL_*
for a Horovod built with NCCL GPU operations; MEMCPY_IN_HOST_BUFFER / GLOO_* when the
collective went through host memory).
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd


def main():
    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        sys.exit("nccl_check.py: no GPU visible to TensorFlow")
    rank, size = hvd.rank(), hvd.size()
    with tf.device("/GPU:0"):
        # alltoall: rank r sends j + 1 rows of value 100 r + j to rank j.
        splits = tf.constant([j + 1 for j in range(size)], tf.int32)
        rows = tf.concat([tf.fill([j + 1, 4], float(100 * rank + j)) for j in range(size)], 0)
        received, _ = hvd.alltoall(rows, splits=splits, name="check_alltoall")
        summed = hvd.allreduce(tf.fill([1024], float(rank + 1)), op=hvd.Sum, name="check_sum")
        gathered = hvd.allgather(tf.fill([2, 3], float(rank)), name="check_gather")
    expected = np.concatenate([np.full([rank + 1, 4], 100 * r + rank) for r in range(size)])
    np.testing.assert_array_equal(received.numpy(), expected)
    np.testing.assert_array_equal(summed.numpy(), np.full([1024], size * (size + 1) / 2))
    np.testing.assert_array_equal(gathered.numpy(),
                                  np.repeat(np.arange(size, dtype=np.float32), 2)[:, None]
                                  * np.ones([1, 3]))
    print(f"rank {rank}/{size}: alltoall, allreduce, allgather of GPU tensors match numpy; "
          f"results on {received.device}; NCCL built: {hvd.nccl_built()}", flush=True)
    hvd.join()
    timeline = os.environ.get("HOROVOD_TIMELINE")
    if rank == 0 and timeline:
        hvd.shutdown()  # flushes the timeline
        with open(timeline) as f:
            text = f.read().rstrip().rstrip(",")
        events = json.loads(text if text.endswith("]") else text + "]")
        activities = sorted({e["name"] for e in events if e.get("ph") == "B" and "name" in e})
        print("timeline activities:", ", ".join(activities))


if __name__ == "__main__":
    main()
