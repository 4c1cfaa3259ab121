"""Run by tests/test_sparse_sgd_training.py in a fresh process: RowSparseSGD under MirroredStrategy.

    python sparse_sgd_mirrored_script.py OUT_DIR

The same model (Dense backbone, `PartialFC(ArcMarginDense(50), sample_rate=0.2)`, `PartialFCLoss`)
trains 3 steps of the same global batches with `model.fit` three times: on one device with
`RowSparseSGD(momentum=0.9, weight_decay=5e-4)`, under `MirroredStrategy` on 2 logical CPUs with the
same optimizer, and under the strategy with that optimizer in a `LossScaleOptimizer`. Writes
OUT_DIR/runs.npz: per run the initial class matrix, each replica's final class matrix and momentum
(`<run>/kernel/<replica>`, `<run>/momentum/<replica>`), the backbone kernel and each step's sampled set.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_facemargin.layers import ArcMarginDense, PartialFC, PartialFCLoss  # noqa: E402
from keras_facemargin.training.sparse_sgd import RowSparseSGD  # noqa: E402

C, D, GLOBAL_BATCH, STEPS = 50, 8, 8, 3
rng = np.random.default_rng(0)
features = rng.standard_normal((GLOBAL_BATCH * STEPS, 6)).astype("float32")
labels = rng.integers(0, 10, GLOBAL_BATCH * STEPS).astype("int32")  # classes 10..49 only as negatives


class RecordSets(keras.callbacks.Callback):
    def __init__(self, head):
        super().__init__()
        self.head, self.sets = head, []

    def on_train_batch_end(self, batch, logs=None):
        self.sets.append(np.asarray(self.head.sampled_classes.value).copy())


def train(strategy, loss_scale):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        x_in, y_in = keras.Input((6,)), keras.Input((), dtype="int32")
        head = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=0.2, seed=1)
        model = keras.Model([x_in, y_in], head([keras.layers.Dense(D, name="fc")(x_in), y_in]))
        sgd = RowSparseSGD(0.1, momentum=0.9, weight_decay=5e-4)
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(sgd) if loss_scale else sgd,
                      loss=PartialFCLoss(head))
        model([features[:1], labels[:1]])
        model.optimizer.build(model.trainable_variables)
    w0 = np.asarray(head.core.kernel.value).copy()
    record = RecordSets(head)
    ds = tf.data.Dataset.from_tensor_slices(((features, labels), labels)).batch(GLOBAL_BATCH)
    model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[record])
    kernel = head.core.kernel
    momentum = sgd.momentums[next(i for i, v in enumerate(model.trainable_variables) if v is kernel)]
    out = {"w0": w0, "sets": np.stack(record.sets), "fc": np.asarray(model.get_layer("fc").kernel.value),
           "iterations": np.asarray(sgd.iterations.value)}
    for name, var in (("kernel", kernel), ("momentum", momentum)):
        for r, t in enumerate(strategy.experimental_local_results(var.value)):
            out[f"{name}/{r}"] = np.asarray(t)
    return out


runs = {"one": train(tf.distribute.get_strategy(), False)}
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
runs["two"] = train(mirrored, False)
runs["two_lso"] = train(mirrored, True)
os.makedirs(sys.argv[1], exist_ok=True)
np.savez(os.path.join(sys.argv[1], "runs.npz"), **{f"{run}/{k}": v for run, out in runs.items() for k, v in out.items()})
print("RESULT {}", flush=True)
