"""Run by tests/test_class_sharding.py in a fresh process: the class-sharded loss on 2 replicas.

    python class_sharding_script.py MODE OUT_DIR

MODE: "mirrored" (MirroredStrategy over 2 logical CPU devices) or "multiworker"
(MultiWorkerMirroredStrategy, TF_CONFIG set by the caller, one replica per worker). Prints one
"RESULT {json}" line with, for this process's replicas: the per-replica loss and gradients of
`sharded_margin_loss` (w.r.t. the local embeddings, the Dense backbone and the replica's shard) for
several heads; the losses and final weights of 2 `ClassShardedLoop` SGD steps; the gathered centres.
The test computes the single-device references itself from `problem()`.
"""

import json
import os
import sys

import numpy as np

C, D_IN, D, BATCH, PER_REPLICA = 11, 6, 8, 8, 4
HEADS = ("arcface", "cosface", "normface", "softmax")
SAMPLE_RATE, SAMPLE_STEP, SAMPLE_SEED = 0.7, 3, 1
LR, MOMENTUM, WEIGHT_DECAY = 0.5, 0.9, 1e-2


def problem():
    """The shared data: inputs (2 global batches), labels, Dense backbone weights, class matrix (C, d)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * BATCH, D_IN)).astype("float32")
    labels = np.array([0, 5, 6, 10, 5, 3, 9, 1, 2, 7, 8, 4, 6, 0, 10, 5], "int32")
    dense_k = (rng.normal(size=(D_IN, D)) * 0.5).astype("float32")
    dense_b = (rng.normal(size=(D,)) * 0.1).astype("float32")
    centres = rng.normal(size=(C, D)).astype("float32")
    return x, labels, dense_k, dense_b, centres


def make_head(name):
    from keras_facemargin.layers import ArcMarginDense, CosineDense, CosMarginDense, SoftmaxDense

    return {
        "arcface": lambda: ArcMarginDense(C, scale=16.0, margin=0.5),
        "cosface": lambda: CosMarginDense(C, scale=16.0, margin=0.35),
        "normface": lambda: CosineDense(C, scale=16.0),
        "softmax": lambda: SoftmaxDense(C, use_bias=False),
    }[name]()


def main(mode, out):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    from keras_facemargin.training import class_sharding as cs

    x, labels, dense_k, dense_b, centres = problem()
    shards = cs.ClassShards(strategy, C, D, seed=7)
    with strategy.scope():
        backbone = keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(D)])
        backbone.set_weights([dense_k, dense_b])

    def local(array):
        def part(ctx):
            start = ctx.replica_id_in_sync_group * PER_REPLICA
            return array[start:start + PER_REPLICA]

        return strategy.experimental_distribute_values_from_function(part)

    xs, ys = local(x[:BATCH]), local(labels[:BATCH])
    result = {"replicas": strategy.num_replicas_in_sync, "replica_ids": shards.replica_ids,
              "bounds": shards.bounds, "initial": {}, "grads": {}}
    result["initial"] = {str(r): shards.kernels[r].numpy().tolist() for r in shards.replica_ids}
    shards.assign(centres)

    def grads_of(head, sample_rate=1.0):
        @tf.function
        def run(xs, ys):
            def fn(x, y):
                kernel, first = shards.local()
                with tf.GradientTape() as tape:
                    emb = backbone(x, training=True)
                    loss = cs.sharded_margin_loss(head, emb, y, kernel, first, C, sample_rate, SAMPLE_STEP, SAMPLE_SEED)
                g = tape.gradient(loss, [emb, *backbone.trainable_variables, kernel])
                rid = tf.distribute.get_replica_context().replica_id_in_sync_group
                return rid, loss, g[0], g[1], g[2], tf.convert_to_tensor(g[3])

            return strategy.run(fn, (xs, ys))

        out = [strategy.experimental_local_results(v) for v in run(xs, ys)]
        keys = ("rid", "loss", "emb", "dense_k", "dense_b", "kernel")
        return [{k: np.asarray(v[i]).tolist() for k, v in zip(keys, out)} for i in range(len(out[0]))]

    for name in HEADS if mode == "mirrored" else ("arcface",):
        result["grads"][name] = grads_of(make_head(name))
    result["grads"]["arcface_sampled"] = grads_of(make_head("arcface"), SAMPLE_RATE)

    # Two SGD steps (momentum, weight decay) of the custom loop from the same weights.
    def dataset_fn(epoch):
        def per_pipeline(ctx):
            ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(PER_REPLICA)
            return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)

        return strategy.distribute_datasets_from_function(per_pipeline)

    with strategy.scope():
        optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    losses = []

    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"] * (batch + 1) - sum(losses))

    loop = cs.ClassShardedLoop(backbone, make_head("arcface"), shards, optimizer, strategy, BATCH)
    ckpt = cs.ShardCheckpoint(shards, loop.shard_optimizer, os.path.join(out, "ckpt"), every_steps=1, keep=1)
    loop.fit(dataset_fn, epochs=1, steps_per_epoch=2, callbacks=[Losses(), ckpt], verbose=0)
    result["checkpoints"] = sorted(os.path.relpath(os.path.join(d, f), os.path.join(out, "ckpt"))
                                   for d, _, files in os.walk(os.path.join(out, "ckpt")) for f in files)
    result["train"] = {"losses": losses, "weights": [w.tolist() for w in backbone.get_weights()],
                       "centres": shards.gather_centres().tolist()}

    # Checkpoint of this worker's shards: saved, overwritten, restored.
    saved = {r: shards.kernels[r].numpy() for r in shards.replica_ids}
    prefixes = cs.save_shards(shards, os.path.join(out, "shards"), loop.shard_optimizer)
    for r in shards.replica_ids:
        shards.kernels[r].assign(tf.zeros_like(shards.kernels[r]))
        loop.shard_optimizer.momenta[r].assign(tf.zeros_like(shards.kernels[r]))
    cs.restore_shards(shards, os.path.join(out, "shards"), loop.shard_optimizer)
    result["restored"] = all(np.array_equal(saved[r], shards.kernels[r].numpy()) for r in shards.replica_ids)
    result["momentum_restored"] = all(float(np.abs(loop.shard_optimizer.momenta[r].numpy()).sum()) > 0
                                      for r in shards.replica_ids)
    result["prefixes"] = [os.path.basename(p) for p in prefixes]
    if mode == "mirrored":  # both shards are this process's: re-read the whole matrix, rows 3..9 across the boundary
        rows = cs.saved_rows(os.path.join(out, "shards"), C, 2)
        full = np.concatenate([saved[r] for r in shards.replica_ids])
        result["saved_rows"] = bool(np.array_equal(rows(0, C), full) and np.array_equal(rows(3, 9), full[3:9]))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
