"""Run by tests/test_training_*.py and tests/test_multiworker.py in a fresh process.

    python training_script.py MODE OUT_DIR [--crash-at N] [--nan-at N] [--estimator E] [--epochs E]

MODE: "single" (default strategy), "mirrored" (2 logical CPU devices) or "multiworker" (TF_CONFIG set
by the caller). Trains the tiny synthetic config with the trainer, then writes OUT_DIR/state_<tag>.npz
(every model and optimizer variable, the feature counts seen at each epoch end, the labels of each
epoch's data) and prints one "RESULT {json}" line.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

args = argparse.ArgumentParser()
args.add_argument("mode", choices=("single", "mirrored", "multiworker"))
args.add_argument("out")
args.add_argument("--crash-at", type=int, default=None, help="os._exit(3) after this global step")
args.add_argument("--nan-at", type=int, default=None, help="set a weight to NaN after this global step")
args.add_argument("--estimator", default="memory_buffer")
args.add_argument("--epochs", type=int, default=2)
args.add_argument("--tag", default="0")
args = args.parse_args()

import tensorflow as tf  # noqa: E402

if args.mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_facemargin.callbacks import find_layers  # noqa: E402
from keras_facemargin.layers.kappaface import KappaMarginDense  # noqa: E402
from keras_facemargin.training import Trainer, get_experiment  # noqa: E402

STEPS = 6
config = get_experiment(
    "synthetic",
    name="tiny",
    output=args.out,
    synthetic_identities=16,
    synthetic_heldout=0,
    image_size=32,
    embedding_dim=16,
    backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [4, 8, 8, 8]},
    scale=16.0,
    batch_size=16,
    lr_reference_batch=16,
    epochs=args.epochs,
    lr_steps=(1,),
    steps_per_epoch=STEPS,
    save_every_steps=2,
    estimator=args.estimator,
    multi_worker=args.mode == "multiworker",
    plots=False,
    verbose=0,
)


class Probe(keras.callbacks.Callback):
    """Records the KappaFace feature counts at each epoch end (before KappaUpdater resets them),
    and crashes / injects a NaN at a given global step."""

    def __init__(self):
        super().__init__()
        self.first_step = 0
        self.counts = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * STEPS + self.first_step + batch + 1
        if step == args.crash_at:
            os._exit(3)
        if step == args.nan_at:
            v = self.model.backbone.trainable_variables[0]
            v.assign(np.full(v.shape, np.nan, v.dtype))

    def on_epoch_end(self, epoch, logs=None):
        head = find_layers(self.model, KappaMarginDense)[0]
        self.counts[epoch] = np.asarray(head.feature_counts.value)


probe = Probe()
trainer = Trainer(config, extra_callbacks=[probe])
results = trainer.train()
model = trainer.model
state = {f"model/{i:03d}/{v.path}": np.asarray(v.value) for i, v in enumerate(model.variables)}
state.update({f"opt/{i:03d}/{v.path}": np.asarray(v.value) for i, v in enumerate(model.optimizer.variables)})
for epoch, counts in probe.counts.items():
    state[f"counts/{epoch}"] = counts
if args.mode != "multiworker":
    # The labels each epoch's batches carry, distributed as `fit` distributes them (under
    # MirroredStrategy the rewritten pipeline yields another, still deterministic, order).
    strategy = trainer.strategy
    for epoch in range(config.epochs):
        labels = []
        for _, y in strategy.experimental_distribute_dataset(trainer.dataset_fn(epoch)):
            labels += [t.numpy() for t in strategy.experimental_local_results(y)]
        state[f"labels/{epoch}"] = np.concatenate(labels)
os.makedirs(args.out, exist_ok=True)
np.savez(os.path.join(args.out, f"state_{args.tag}.npz"), **state)
ckpt = trainer.checkpoint.latest
out = {
    "replicas": trainer.strategy.num_replicas_in_sync,
    "history": results["history"],
    "resumed_from_step": results["resumed_from_step"],
    "checkpoint": ckpt,
    "checkpoint_variables": [name for name, _ in tf.train.list_variables(ckpt)],
    "run_dir": str(config.run_dir),
    "steps_per_epoch": STEPS,
    "batch_size": config.batch_size,
}
print("RESULT " + json.dumps(out), flush=True)
sys.stdout.flush()
