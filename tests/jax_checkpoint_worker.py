"""JAX trainer runs that stop and resume in a new process; driven by tests/test_jax_checkpoint.py.

Usage: `KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 python
tests/jax_checkpoint_worker.py first|resume DIR`. A tiny synthetic `training.Trainer` run (4 identities,
74 images of 32x32, tiny IResNet, KappaFace memory buffer, 3 steps of 8 images per epoch, 2 epochs, the
lr divided at epoch 1) in three variants:

* `dp`: DataParallel over the 2 host devices, epoch-end checkpoints only; stopped at the start of epoch 1.
* `shard`: `shard_classes=True` (class centres, per-class state and memory-buffer rows split over the
  2 devices), a checkpoint every 2 steps too; stopped at the start of epoch 1 (latest checkpoint: step 3).
* `shard_mid`: as `shard`, stopped before the third step of epoch 1 (latest checkpoint: step 4, mid-epoch).

`first` runs each variant uninterrupted (`full_<v>`) and stopped (`<v>`; an exception raised by a
callback, as a kill would leave it), `resume` continues each stopped run in this new process and tries
the checkpoint of `dp` on a model with another embedding size. Before resuming, the checkpoint it
resumes from is copied to `DIR/<run>.from.npz`. Each run leaves `DIR/<run>.npz`: every
model and optimizer variable at the end (`model/<i>`, `opt/<i>`, in variable order) and, for resumed
runs, `DIR/<run>.restored.npz`: the same right after the restore (at the first `on_train_begin`), plus
`DIR/<mode>.json` with results, train steps done in this process and the shard shapes after restore.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import keras

from keras_facemargin.training import Trainer, get_experiment
from keras_facemargin.training import distribution as kdist

STEPS = 3
VARIANTS = {"dp": dict(shard_classes=False, save_every_steps=0, stop_at=(1, 0)),
            "shard": dict(shard_classes=True, save_every_steps=2, stop_at=(1, 0)),
            "shard_mid": dict(shard_classes=True, save_every_steps=2, stop_at=(1, 2))}


class Stop(Exception):
    """Stands for the process being killed."""


def config(out, name, shard_classes, save_every_steps, **overrides):
    kwargs = dict(
        backend="jax", shard_classes=shard_classes, synthetic_identities=4, synthetic_heldout=0, image_size=32,
        embedding_dim=16, backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [8, 8, 8, 8]},
        batch_size=8, lr_reference_batch=8, epochs=2, lr_steps=(1,), steps_per_epoch=STEPS,
        save_every_steps=save_every_steps, keep_checkpoints=2, verification_sets="", plots=False, verbose=0,
        output=str(out), name=name,
    )
    kwargs.update(overrides)
    return get_experiment("synthetic", **kwargs)


class Probe(keras.callbacks.Callback):
    """Counts the train steps; records the state at the first `on_train_begin`; raises `Stop` at `stop_at`."""

    def __init__(self, stop_at=None, restored_path=None):
        super().__init__()
        self.stop_at, self.restored_path = stop_at, restored_path
        self.steps, self.epoch, self.shards = 0, 0, None

    def on_train_begin(self, logs=None):
        if self.restored_path and self.shards is None:
            model = self.model
            dump_state(model, self.restored_path)
            head = model.head
            momentum = model.optimizer.momentums[model.optimizer._get_variable_index(head.kernel)]
            self.shards = {name: kdist.shard_shapes(v) for name, v in
                           [("kernel", head.kernel), ("kernel_momentum", momentum), ("memory", head.memory),
                            ("kappa", head.kappa), ("psi", head.psi), ("backbone", model.backbone.weights[0])]}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.stop_at == (self.epoch, batch):
            raise Stop(f"stopped at epoch {self.epoch} batch {batch}")

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def dump_state(model, path):
    arrays = {}
    for group, variables in (("model", model.variables), ("opt", model.optimizer.variables)):
        for i, v in enumerate(variables):
            arrays[f"{group}/{i}"] = np.asarray(v.value)
        arrays[f"{group}_paths"] = np.array([v.path for v in variables])
    np.savez(path, **arrays)


def train(out, name, probe, **kw):
    trainer = Trainer(config(out, name, **kw), extra_callbacks=[probe])
    t0 = time.time()
    try:
        results = trainer.train()
    except Stop:
        results = None
    dump_state(trainer.model, out / f"{name}.npz")
    return {"results": results, "steps": probe.steps, "shards": probe.shards, "seconds": round(time.time() - t0, 1),
            "checkpoints": sorted(os.listdir(out / name / "checkpoints"))}


def first(out):
    report = {}
    for variant, spec in VARIANTS.items():
        kw = {k: v for k, v in spec.items() if k != "stop_at"}
        if variant != "shard_mid":  # shard's uninterrupted run is shard_mid's too
            report[f"full_{variant}"] = train(out, f"full_{variant}", Probe(), **kw)
        report[variant] = train(out, variant, Probe(stop_at=spec["stop_at"]), **kw)
    return report


def resume(out):
    report = {}
    for variant, spec in VARIANTS.items():
        kw = {k: v for k, v in spec.items() if k != "stop_at"}
        latest = max((out / variant / "checkpoints").glob("ckpt-*.npz"), key=lambda p: int(p.stem[5:]))
        shutil.copy(latest, out / f"{variant}.from.npz")  # the resumed run replaces it by newer ones
        report[variant] = train(out, variant, Probe(restored_path=out / f"{variant}.restored.npz"), **kw)
    # dp's newest checkpoint in the run folder of a model with 8-d embeddings: refused, naming file and variable.
    other = out / "other" / "checkpoints"
    other.mkdir(parents=True)
    shutil.copy(out / "dp" / "checkpoints" / f"ckpt-{2 * STEPS}.npz", other)
    try:
        Trainer(config(out, "other", False, 0, embedding_dim=8)).train()
        report["mismatch"] = None
    except Exception as e:  # noqa: BLE001 - recorded for the test
        report["mismatch"] = [type(e).__name__, str(e)]
    return report


def main(mode, out):
    out = Path(out)
    report = {"first": first, "resume": resume}[mode](out)
    report["devices"] = [str(d) for d in keras.distribution.list_devices()]
    (out / f"{mode}.json").write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
