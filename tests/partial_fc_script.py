"""Run by tests/test_partial_fc.py in a fresh process: Partial FC under 2 replicas.

    python partial_fc_script.py MODE OUT_DIR

MODE "mirrored": MirroredStrategy on 2 logical CPU devices; "multiworker":
MultiWorkerMirroredStrategy from TF_CONFIG (one CPU replica per worker, set by the caller).

Part A: every registry head, each in a `PartialFC(sample_rate=0.25)`, trains 2 steps in one
`strategy.run` step (shared backbone, SGD with momentum); per step it records the global batch's
labels and each replica's sampled set, and at trace time the type of the class-matrix gradient
before and after the cross-replica all-reduce. Part B: `FaceRecognizer(PartialFC(KappaFace))` with
`PartialFCLoss`, trained by `model.fit` (mirrored) or the package's `CustomLoop` (multiworker),
2 epochs of 2 steps with `KappaUpdater`. Writes OUT_DIR/state_<task>.npz (every variable) and
prints one "RESULT {json}" line.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    TASK = 0
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    TASK = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_facemargin as kfm  # noqa: E402
from keras_facemargin.layers import PartialFC, PartialFCLoss, registry  # noqa: E402
from keras_facemargin.training.custom_loop import CustomLoop  # noqa: E402

C, D, N, GLOBAL_BATCH, RATE, STEPS = 40, 8, 16, 8, 0.25, 2
rng = np.random.default_rng(0)
features = rng.standard_normal((N, 5)).astype("float32")
labels = rng.integers(0, C, N).astype("int32")
index = np.arange(N, dtype="int32")
counts = np.bincount(labels, minlength=C) + 1


def head_for(name):
    extra = {"seed": 3} if name == "subface" else {}
    head = registry.build_head(name, C, class_counts=counts, num_samples=N, run_options={"scale": 16.0}, **extra)
    return PartialFC(head, sample_rate=RATE, seed=0)


def part_a():
    keras.utils.set_random_seed(0)
    with strategy.scope():
        backbone = keras.Sequential([keras.Input((5,)), keras.layers.Dense(D, name="fc")], name="backbone")
        heads = {name: head_for(name) for name in registry.head_names()}
        emb = backbone(features[:2])
        for name, head in heads.items():
            head([emb, labels[:2], index[:2]] if "kappa" in name else [emb, labels[:2]], training=False)
        variables = backbone.trainable_variables + [v for h in heads.values() for v in h.trainable_variables]
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        optimizer.build(variables)
    losses = {name: PartialFCLoss(head, reduction=None) for name, head in heads.items()}
    arc_kernel = heads["arcface"].core.kernel
    kernel_at = next(i for i, v in enumerate(variables) if v is arc_kernel)
    grad_types = {}

    def replica_step(x, y, idx):
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            emb = backbone(x, training=True)
            total, extra = 0.0, []
            for name, head in heads.items():
                logits = head([emb, y, idx] if "kappa" in name else [emb, y], training=True)
                total += tf.nn.compute_average_loss(losses[name](y, logits), global_batch_size=GLOBAL_BATCH)
                extra += head.losses
            total += tf.nn.scale_regularization_loss(tf.add_n(extra))
        grads = tape.gradient(total, variables)
        grad_types["replica"] = type(grads[kernel_at]).__name__
        grad_types["all_reduced"] = type(ctx.all_reduce("sum", grads[kernel_at])).__name__
        optimizer.apply_gradients(zip(grads, variables))
        sets = {name: tf.identity(h.sampled_classes.value) for name, h in heads.items()}
        return ctx.all_gather(tf.identity(y), axis=0), sets  # (a raw function input has no device)

    ds = tf.data.Dataset.from_tensor_slices((features, labels, index)).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = strategy.experimental_distribute_dataset(ds.with_options(options))

    def step(batch):
        return strategy.run(replica_step, args=batch)

    if MODE == "multiworker":  # one graph: its collectives run grouped (eagerly each is a round trip)
        step = tf.function(step)  # (mirrored runs eagerly: 2 steps of 19 heads run faster than they trace;
        # part B runs traced under both)

    out = {"global_labels": [], "sets": {name: [] for name in heads}}
    for batch in ds:
        global_labels, sets = step(batch)
        out["global_labels"].append(strategy.experimental_local_results(global_labels)[0].numpy().tolist())
        for name in heads:
            out["sets"][name].append([t.numpy().tolist() for t in strategy.experimental_local_results(sets[name])])
    out["grad_types"] = grad_types
    out["sample_steps"] = {name: int(h.sample_step.value.numpy()) for name, h in heads.items()}
    out["final_sets"] = {name: [np.asarray(t).tolist() for t in strategy.experimental_local_results(h.sampled_classes.value)]
                         for name, h in heads.items()}
    state = {f"a/{v.path}": np.asarray(v.value) for h in [backbone, *heads.values()] for v in h.weights}
    return out, state


def backbone_b():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(6, name="fc")(x))


def part_b():
    n, classes = 16, 12
    images = rng.standard_normal((n, 8, 8, 3)).astype("float32")
    y = rng.integers(0, classes, n).astype("int32")
    keras.utils.set_random_seed(1)
    with strategy.scope():
        kappa = kfm.layers.KappaMarginDense(classes, class_counts=np.bincount(y, minlength=classes) + 1,
                                            num_samples=n, scale=8.0)
        head = PartialFC(kappa, sample_rate=0.7, seed=5)
        model = kfm.FaceRecognizer(backbone_b(), head)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)
        loss = PartialFCLoss(head)
        model.compile(optimizer=optimizer, loss=loss)
        model({"images": images[:1], "labels": y[:1], "index": index[:1]}, training=False)
        optimizer.build(model.trainable_variables)

    def dataset(epoch):
        ds = tf.data.Dataset.from_tensor_slices(({"images": images, "labels": y, "index": np.arange(n, dtype="int32")}, y))
        return ds.batch(GLOBAL_BATCH, drop_remainder=True)

    callbacks = [kfm.callbacks.KappaUpdater()]
    if MODE == "mirrored":
        hist = model.fit(dataset(0), epochs=2, verbose=0, callbacks=callbacks).history
    else:
        loop = CustomLoop(model, optimizer, strategy, GLOBAL_BATCH, loss=loss)
        hist = loop.fit(dataset, epochs=2, steps_per_epoch=n // GLOBAL_BATCH, callbacks=callbacks, verbose=0).history
    out = {"loss": [float(v) for v in hist["loss"]], "psi": np.asarray(kappa.psi.value).tolist(),
           "sample_step": int(head.sample_step.value.numpy())}
    state = {f"b/{v.path}": np.asarray(v.value) for v in model.variables}
    return out, state


import time  # noqa: E402

t0 = time.process_time()
a, state_a = part_a()
t1 = time.process_time()
b, state_b = part_b()
print(f"cpu seconds: part A {t1 - t0:.1f}, part B {time.process_time() - t1:.1f}", file=sys.stderr)
os.makedirs(OUT, exist_ok=True)
np.savez(os.path.join(OUT, f"state_{TASK}.npz"), **state_a, **state_b)
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "a": a, "b": b}), flush=True)
