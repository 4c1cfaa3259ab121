"""One KappaFace (memory buffer) epoch on JAX, single-device and under keras.distribution.DataParallel.

Run by tests/test_jax_distribution.py as
`KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/jax_distribution_worker.py OUT.json`.
Both runs start from the same NumPy weights and visit the same batches, so their
KappaFace accumulators, memory buffer and kappa must agree.
"""

import json
import sys

import numpy as np

import jax
import keras

import keras_facemargin as kfm

C, N, IMAGE, BATCH = 4, 24, 16, 8


def _data():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, size=(N, IMAGE, IMAGE, 3)).astype("float32")
    labels = np.array([0, 1, 2, 3] * (N // C), "int32")[rng.permutation(N)]
    labels[:2] = 0  # unequal class counts
    return {"images": images, "labels": labels, "index": np.arange(N, dtype="int32")}


def _set_weights(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path.rsplit("/", 1)[-1]
        if name in ("beta", "moving_mean"):
            value = np.zeros(w.shape, "float32")
        elif name in ("gamma", "moving_variance"):
            value = np.ones(w.shape, "float32")
        elif w.trainable:
            value = rng.normal(0.0, 0.2, size=w.shape).astype("float32")
        else:
            continue  # the KappaFace state keeps its initial value
        w.assign(value)


def run():
    x = _data()
    keras.utils.set_random_seed(1)
    backbone = kfm.backbones.IResNet(stage_blocks=(1, 1, 1, 1), stage_filters=(8, 8, 16, 16),
                                     image_size=IMAGE, embedding_dim=16)
    counts = np.bincount(x["labels"], minlength=C)
    head = kfm.layers.KappaMarginDense(C, class_counts=counts, num_samples=N, scale=8.0, buffer_alpha=0.3)
    model = kfm.FaceRecognizer(backbone, head)
    model({k: v[:2] for k, v in x.items()})
    _set_weights(model, 2)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, x["labels"], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    state = {
        "loss": [float(v) for v in history.history["loss"]],
        "feature_counts": np.asarray(head.feature_counts.value).tolist(),
        "feature_sums": np.asarray(head.feature_sums.value).tolist(),
        "memory": np.asarray(head.memory.value).tolist(),
        "kernel_devices": len(head.weights[0].value.sharding.device_set),
    }
    state["update"] = head.update_margins()
    state["kappa"] = np.asarray(head.kappa.value).tolist()
    state["classes_in_data"] = int(len(np.unique(x["labels"])))
    return state


def main(out):
    result = {"devices": [str(d) for d in jax.devices()], "single": run()}
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    result["data_parallel"] = run()
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
