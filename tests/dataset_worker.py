"""Run under horovodrun by test_dataset.py: reads this rank's evaluation batches."""

import sys

import horovod.tensorflow as hvd
import numpy as np

import dataset

hvd.init()
data_dir, batch_size, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ds = dataset.SplitDataset(data_dir, batch_size, hvd.rank(), hvd.size(), training=False)
batches = list(ds)
np.savez(f"{out_dir}/rank{hvd.rank()}.npz", num_ranks=hvd.size(),
         categorical=np.concatenate([c.numpy() for (_, c), _ in batches]),
         label=np.concatenate([l.numpy() for _, l in batches]))
