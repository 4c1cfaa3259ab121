"""Run by tests/test_distributed.py in a fresh process (logical devices must be
configured before TensorFlow runs any op). Prints one JSON line of results."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_facemargin as kfm  # noqa: E402


def backbone(batchnorm):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    if batchnorm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, name="fc")(x))


def dataset(images, labels, batch):
    n = len(labels)
    ds = tf.data.Dataset.from_tensor_slices(({"images": images, "labels": labels, "index": np.arange(n, dtype="int32")}, labels))
    return ds.batch(batch, drop_remainder=True)


def main():
    estimator = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    n, C = 24, 5
    images = rng.standard_normal((n, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, C, n).astype("int32")
    counts = np.bincount(labels, minlength=C)
    out = {"replicas": strategy.num_replicas_in_sync}
    keras.utils.set_random_seed(0)
    with strategy.scope():
        head = kfm.layers.KappaMarginDense(C, class_counts=counts, num_samples=n, estimator=estimator, scale=8.0)
        model = kfm.FaceRecognizer(backbone(batchnorm=False), head)
        # lr = 0: weights stay fixed, so a single-device reference is exact.
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset(images, labels, 8), epochs=1, verbose=0)
    out["feature_sums"] = np.asarray(head.feature_sums.value).tolist()
    out["feature_counts"] = np.asarray(head.feature_counts.value).tolist()
    if estimator == "memory_buffer":
        out["memory"] = np.asarray(head.memory.value).tolist()
    out["embeddings"] = model.backbone.predict(images, verbose=0).tolist()
    out["labels"] = labels.tolist()

    # A real run: BN, non-zero lr, KappaUpdater, two epochs.
    with strategy.scope():
        head2 = kfm.layers.KappaMarginDense(C, class_counts=counts, num_samples=n, estimator=estimator, scale=8.0)
        model2 = kfm.FaceRecognizer(backbone(batchnorm=True), head2)
        model2.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model2.fit(dataset(images, labels, 8), epochs=2, verbose=0, callbacks=[kfm.callbacks.KappaUpdater()])
    out["history"] = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    out["psi"] = head2.psi.numpy().tolist()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
