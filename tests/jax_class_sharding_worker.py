"""Class-sharded (ModelParallel) fits on JAX against unsharded ones; driven by tests/test_jax_class_sharding.py.

Usage: `KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 python
tests/jax_class_sharding_worker.py OUT.json [trainer]`. For ArcMarginDense and KappaMarginDense
(memory buffer) it fits a tiny FaceRecognizer (Dense embedding) for 2 epochs twice, on one device
and under `class_sharded_distribution` over the 2 host devices, from the same NumPy weights and
the same batches (no shuffling), and writes the losses, every final weight, the KappaFace state
and how the sharded variables are split, plus the errors of `class_sharded_distribution`. With
`trainer` it also runs `training.run` with backend="jax", shard_classes=True (what
`examples/train_ms1mv2.py --backend jax --shard-classes` calls) on a tiny synthetic set.
"""

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

import jax
import keras

import keras_facemargin as kfm
from keras_facemargin.callbacks import KappaUpdater
from keras_facemargin.training import distribution as kdist

C, N, D_IN, EMB, BATCH, EPOCHS = 8, 32, 12, 16, 8, 2


def _data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C, dtype="int32"), N // C)[rng.permutation(N)]
    labels[:3] = 0  # unequal class counts
    centres = rng.normal(size=(C, D_IN))
    images = (centres[labels] + 0.7 * rng.normal(size=(N, D_IN))).astype("float32")
    return {"images": images, "labels": labels, "index": np.arange(N, dtype="int32")}


def _head(kind, counts):
    if kind == "arcface":
        return kfm.layers.ArcMarginDense(C, scale=8.0, margin=0.3)
    return kfm.layers.KappaMarginDense(C, class_counts=counts, num_samples=N, scale=8.0, margin=0.5)


def _fit(kind, sharded):
    """Build, set deterministic weights, fit; returns the recorded state."""
    x = _data()
    keras.utils.set_random_seed(1)
    head = _head(kind, np.bincount(x["labels"], minlength=C))
    distribution = kdist.class_sharded_distribution(head, devices=jax.devices()) if sharded else None
    scope = distribution.scope() if sharded else _null()
    with scope:
        inp = keras.Input((D_IN,))
        hidden = keras.layers.Dense(24, activation="tanh")(inp)
        backbone = keras.Model(inp, keras.layers.Dense(EMB)(hidden))
        model = kfm.FaceRecognizer(backbone, head)
        model({k: v[:2] for k, v in x.items()})
        rng = np.random.default_rng(2)
        for w in model.trainable_weights:
            w.assign(rng.normal(0.0, 0.3, size=w.shape).astype("float32"))
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callbacks = [KappaUpdater()] if kind == "kappaface" else []
        history = model.fit(x, x["labels"], batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                            callbacks=callbacks)
    momentum = optimizer.momentums[optimizer._get_variable_index(head.kernel)]
    state = {
        "loss": [float(v) for v in history.history["loss"]],
        "weights": [np.asarray(w.value, "float64").tolist() for w in model.weights],
        "weight_paths": [w.path for w in model.weights],
        "kernel": np.asarray(head.kernel.value).tolist(),
        "kernel_shape": list(head.kernel.shape),
        "kernel_shards": kdist.shard_shapes(head.kernel),
        "kernel_devices": len(head.kernel.value.sharding.device_set),
        "kernel_shard_columns": [_columns(s) for s in head.kernel.value.addressable_shards],
        "momentum_shards": kdist.shard_shapes(momentum),
        "backbone_kernel_shards": kdist.shard_shapes(backbone.weights[0]),
    }
    if kind == "kappaface":
        for name in ("kappa", "psi", "feature_sums", "feature_counts", "memory", "class_count_weights"):
            v = getattr(head, name)
            state[name] = np.asarray(v.value, "float64").tolist()
            state[name + "_shards"] = kdist.shard_shapes(v)
    return state


def _columns(shard):
    index = shard.index[1]
    return [index.start or 0, index.stop]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _errors():
    out = {}
    try:
        kdist.class_sharded_distribution(kfm.layers.ArcMarginDense(5), devices=jax.devices())
    except Exception as e:  # noqa: BLE001 - recorded for the test
        out["indivisible"] = [type(e).__name__, isinstance(e, ValueError), str(e)]
    built = kfm.layers.ArcMarginDense(4)
    built.build((None, 8))
    try:
        kdist.class_sharded_distribution(built, devices=jax.devices())
    except Exception as e:  # noqa: BLE001
        out["built"] = [type(e).__name__, isinstance(e, ValueError), str(e)]
    head = kfm.layers.KappaMarginDense(4, class_counts=[7, 6, 6, 6], num_samples=25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = kdist.class_sharded_distribution(head, devices=jax.devices())
    def axes(path):
        layout = dist.get_tensor_layout(path)
        return None if layout is None else list(layout.axes)

    out["odd_samples"] = {
        "warnings": [str(w.message) for w in caught],
        "memory": axes(f"face_recognizer/{head.name}/memory"),
        "kernel": axes(f"face_recognizer/{head.name}/kernel"),
        "kappa": axes(f"{head.name}/kappa"),
        "backbone": axes("dense/kernel"),
    }
    return out


def _trainer(tmp):
    """A tiny synthetic `training.run` with backend="jax", shard_classes=True (KappaFace memory buffer)."""
    from keras_facemargin.training import get_experiment, run

    cfg = get_experiment(
        "synthetic", backend="jax", shard_classes=True, synthetic_identities=8, synthetic_heldout=0, image_size=32,
        embedding_dim=16, backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [8, 8, 8, 8]},
        batch_size=8, lr_reference_batch=8, epochs=2, lr_steps=(1,), steps_per_epoch=2, save_every_steps=1,
        verification_sets="", plots=False, verbose=0, output=str(tmp), name="jaxshard",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run(cfg)
    run_dir = Path(tmp) / "jaxshard"
    model = keras.saving.load_model(run_dir / "model.keras")
    return {"results": results, "loaded_kernel_shape": list(model.head.kernel.shape),
            "files": sorted(p.name for p in run_dir.iterdir()),
            "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
            "distribution_after": repr(keras.distribution.distribution()),
            "warnings": [str(w.message) for w in caught if "memory buffer" in str(w.message)]}


def main(out, *modes):
    result = {"devices": [str(d) for d in jax.devices()], "errors": _errors()}
    for kind in ("arcface", "kappaface"):
        result[kind] = {"single": _fit(kind, False), "sharded": _fit(kind, True)}
    if "trainer" in modes:
        result["trainer"] = _trainer(os.path.dirname(os.path.abspath(out)))
    with open(out, "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:])
