"""RowSparseSGD in training: under MirroredStrategy, in a LossScaleOptimizer, and in the Trainer.

References: the same model trained on one device with the same global batches (one-device
RowSparseSGD is checked against a NumPy reference of its lazy-row definition in
tests/test_partial_fc_sparse.py), the initial class matrix (rows never sampled stay bit-identical,
their momentum zero), each step's recorded sampled set, and an uninterrupted Trainer run (resume).
"""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_facemargin.callbacks import find_layers
from keras_facemargin.layers import ArcMarginDense, PartialFC, PartialFCLoss
from keras_facemargin.training.sparse_sgd import RowSparseSGD
from testing import repo_env, result_of

HERE = Path(__file__).parent


class RecordSets(keras.callbacks.Callback):
    """The class matrix before training and the sampled set after each step."""

    def __init__(self):
        super().__init__()
        self.sets, self.w0 = [], None

    def on_train_begin(self, logs=None):
        self.head = find_layers(self.model, PartialFC)[0]
        if self.w0 is None:
            self.w0 = np.asarray(self.head.core.kernel.value).copy()

    def on_train_batch_end(self, batch, logs=None):
        self.sets.append(np.asarray(self.head.sampled_classes.value).copy())


def _never_sampled(sets, num_classes):
    return np.setdiff1d(np.arange(num_classes), np.concatenate(sets))


@pytest.mark.distributed
@pytest.mark.slow
def test_two_replicas_update_the_sampled_rows_as_one_device(tmp_path):
    proc = subprocess.run([sys.executable, str(HERE / "sparse_sgd_mirrored_script.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=repo_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    result_of(proc.stdout, proc.stderr)
    runs = np.load(tmp_path / "runs.npz")
    one = {k.split("/", 1)[1]: runs[k] for k in runs.files if k.startswith("one/")}
    np.testing.assert_array_equal(runs["two/w0"], one["w0"])
    assert len({tuple(s) for s in one["sets"]}) == 3  # another set at every step
    never = _never_sampled(one["sets"], 50)
    assert len(never) > 0
    for run in ("two", "two_lso"):
        np.testing.assert_array_equal(runs[f"{run}/sets"], one["sets"])  # the same sets on both replicas' step
        assert int(runs[f"{run}/iterations"]) == 3  # no step skipped by the loss scale
        for r in (0, 1):  # each replica's copy
            kernel, momentum = runs[f"{run}/kernel/{r}"], runs[f"{run}/momentum/{r}"]
            np.testing.assert_allclose(kernel, one["kernel/0"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(momentum, one["momentum/0"], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(kernel[never], one["w0"][never])  # bit-identical
            assert not np.any(momentum[never])
        np.testing.assert_allclose(runs[f"{run}/fc"], one["fc"], rtol=1e-5, atol=1e-5)
    # The sampled rows did move, with momentum: the comparison is not between untouched matrices.
    sampled = np.unique(one["sets"])
    assert np.all(np.any(one["kernel/0"][sampled] != one["w0"][sampled], axis=1))
    assert np.all(np.any(one["momentum/0"][sampled] != 0, axis=1))


def test_loss_scale_optimizer_in_mixed_float16_moves_only_the_sampled_rows():
    C, rng = 30, np.random.default_rng(3)
    x, y = rng.standard_normal((8, 8)).astype("float32"), rng.integers(0, 4, 8).astype("int32")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        inputs, labels = keras.Input((8,)), keras.Input((), dtype="int32")
        head = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=0.2)
        model = keras.Model([inputs, labels], head([keras.layers.Dense(8)(inputs), labels]))
        sgd = RowSparseSGD(0.1, momentum=0.9, weight_decay=5e-4)
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(sgd), loss=PartialFCLoss(head))
        w0, applied = head.core.kernel.numpy().copy(), []
        for _ in range(5):
            before = int(sgd.iterations.numpy())
            model.train_on_batch([x, y], y)
            if int(sgd.iterations.numpy()) > before:  # not skipped for a non-finite scaled gradient
                applied.append(head.sampled_classes.numpy().copy())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert len(applied) >= 2
    moved = np.flatnonzero(np.any(head.core.kernel.numpy() != w0, axis=1))
    np.testing.assert_array_equal(moved, np.unique(np.concatenate(applied)))
    assert len(moved) < C


def _tiny_config(output, **overrides):
    from keras_facemargin.training import get_experiment

    kwargs = dict(name="pfc", output=str(output), synthetic_identities=32, synthetic_heldout=0, image_size=32,
                  embedding_dim=16, backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [4, 8, 8, 8]},
                  scale=16.0, batch_size=8, lr_reference_batch=8, epochs=1, lr_steps=(1,), steps_per_epoch=4,
                  save_every_steps=2, sample_rate=0.3, plots=False, verbose=0)
    kwargs.update(overrides)
    return get_experiment("synthetic", **kwargs)


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Raises after global step `step` (the trainer's checkpoint callback comes after the extra ones)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.step:
            raise Crash


def _state(trainer):
    model = trainer.model
    return ([np.asarray(v.value) for v in model.variables], [np.asarray(v.value) for v in model.optimizer.variables])


@pytest.mark.slow
def test_trainer_uses_row_sparse_sgd_with_partial_fc_and_resumes_identically(tmp_path):
    from keras_facemargin.training import Trainer
    from keras_facemargin.training.trainer import make_optimizer

    assert type(make_optimizer(_tiny_config(tmp_path, sample_rate=1.0), 0.1)) is keras.optimizers.SGD
    record = RecordSets()
    straight = Trainer(_tiny_config(tmp_path / "straight"), extra_callbacks=[record])
    results = straight.train()
    assert results["resumed_from_step"] == 0 and len(record.sets) == 4
    optimizer = straight.model.optimizer
    assert type(optimizer) is RowSparseSGD
    assert (optimizer.momentum, optimizer.weight_decay) == (straight.config.momentum, straight.config.weight_decay)
    kernel = record.head.core.kernel
    never = _never_sampled(record.sets, 32)
    assert len(never) > 0
    np.testing.assert_array_equal(kernel.numpy()[never], record.w0[never])
    momentum = optimizer.momentums[next(i for i, v in enumerate(straight.model.trainable_variables) if v is kernel)]
    assert not np.any(momentum.numpy()[never])
    sampled = np.unique(np.concatenate(record.sets))
    assert np.all(np.any(kernel.numpy()[sampled] != record.w0[sampled], axis=1))

    with pytest.raises(Crash):  # killed after step 3; the last checkpoint is step 2
        Trainer(_tiny_config(tmp_path / "killed"), extra_callbacks=[CrashAt(3)]).train()
    resumed = Trainer(_tiny_config(tmp_path / "killed"))
    assert resumed.train()["resumed_from_step"] == 2
    assert type(resumed.model.optimizer) is RowSparseSGD
    (model_a, opt_a), (model_b, opt_b) = _state(straight), _state(resumed)
    assert len(model_a) == len(model_b) and len(opt_a) == len(opt_b) and len(opt_a) > 2
    for a, b in zip(model_a + opt_a, model_b + opt_b):
        np.testing.assert_array_equal(a, b)
