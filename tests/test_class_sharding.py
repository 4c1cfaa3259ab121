"""The class matrix sharded over 2 replicas on TensorFlow equals the single-device margin softmax.

tests/class_sharding_script.py runs in a fresh process: under MirroredStrategy on 2 logical CPUs,
and as 2 MultiWorkerMirroredStrategy workers on 127.0.0.1 (one replica each). C = 11 classes over 2
replicas (shards of 5 and 6 rows, no padding). Here, in this process, the references: the same
head unsharded (plain TF/Keras, its (d, C) kernel = the matrix) and a NumPy ArcFace. Checked to
1e-5: the loss, the gradients w.r.t. the embeddings (concatenated over replicas), the Dense
backbone (summed over replicas, as the optimizer's all-reduce does) and the class matrix
(reassembled from the shards); Partial FC per shard against the softmax over the sampled union;
2 SGD steps (momentum, weight decay) of `ClassShardedLoop` against Keras SGD on one device; the
shard checkpoint round trip.
"""

import numpy as np
import pytest
from class_sharding_script import (
    BATCH, C, D, HEADS, LR, MOMENTUM, SAMPLE_RATE, WEIGHT_DECAY, make_head, problem,
)
from numpy_reference import arcface_target, margin_logits
from testing import repo_env, result_of, run_workers

# One xdist worker for the module (each fixture built once); with test_multiworker's: TF_CONFIG workers never overlap.
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.xdist_group("tf_config_workers")]
SCRIPT = __import__("pathlib").Path(__file__).with_name("class_sharding_script.py")
TOL = dict(rtol=1e-5, atol=1e-5)


def _run_mirrored(out):
    import subprocess
    import sys

    env = repo_env()
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "mirrored", str(out)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [result_of(proc.stdout, proc.stderr)]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    return _run_mirrored(tmp_path_factory.mktemp("mirrored"))


@pytest.fixture(scope="module")
def multiworker(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiworker")
    return run_workers(SCRIPT, lambda i: ["multiworker", str(out / f"worker{i}")], timeout=300)


def replicas(outputs, key):
    """The per-replica entries of `grads[key]` of all processes, in global replica order."""
    found = sorted((r for o in outputs for r in o["grads"][key]), key=lambda r: r["rid"])
    assert [r["rid"] for r in found] == list(range(len(found)))
    return found


def reference(name, columns=None):
    """Loss and gradients (embeddings, Dense kernel, Dense bias, class matrix) of the unsharded head."""
    import keras
    import tensorflow as tf

    x, labels, dense_k, dense_b, centres = problem()
    x, labels = tf.constant(x[:BATCH]), tf.constant(labels[:BATCH])
    head = make_head(name)
    head.build((None, D))
    kernel, k, b = tf.Variable(centres.T), tf.Variable(dense_k), tf.Variable(dense_b)
    head.kernel.assign(kernel)
    with tf.GradientTape(persistent=True) as tape:
        emb = tf.matmul(x, k) + b
        tape.watch(emb)
        head.kernel = kernel  # differentiate w.r.t. a plain variable
        logits = head([emb, labels], training=True)
        y = labels
        if columns is not None:  # Partial FC: the softmax over the sampled classes only
            logits = tf.gather(logits, columns, axis=1)
            y = tf.searchsorted(tf.constant(columns, "int32"), labels)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    g_emb, g_k, g_b, g_w = tape.gradient(loss, [emb, k, b, kernel])
    return float(loss), g_emb.numpy(), g_k.numpy(), g_b.numpy(), g_w.numpy().T


def check_against_reference(reps, name, columns=None):
    loss, g_emb, g_k, g_b, g_w = reference(name, columns)
    np.testing.assert_allclose(sum(r["loss"] for r in reps), loss, **TOL)
    np.testing.assert_allclose([r["loss"] for r in reps], [loss / len(reps)] * len(reps), **TOL)  # each 1/N
    np.testing.assert_allclose(np.concatenate([r["emb"] for r in reps]), g_emb, **TOL)
    np.testing.assert_allclose(sum(np.asarray(r["dense_k"]) for r in reps), g_k, **TOL)
    np.testing.assert_allclose(sum(np.asarray(r["dense_b"]) for r in reps), g_b, **TOL)
    shards = [np.asarray(r["kernel"]) for r in reps]
    assert [len(s) for s in shards] == [5, 6]  # C = 11 over 2 replicas, unpadded
    np.testing.assert_allclose(np.concatenate(shards), g_w, **TOL)


def test_numpy_arcface_matches_the_tf_reference():
    x, labels, dense_k, dense_b, centres = problem()
    emb = x[:BATCH] @ dense_k + dense_b
    logits = margin_logits(emb, centres.T, labels[:BATCH], lambda c: arcface_target(c, 0.5), 16.0)
    logits = logits - logits.max(1, keepdims=True)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(BATCH), labels[:BATCH]]
    np.testing.assert_allclose(reference("arcface")[0], ce.mean(), rtol=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_mirrored_loss_and_gradients_equal_single_device(mirrored, name):
    assert mirrored[0]["replicas"] == 2 and mirrored[0]["bounds"] == [[0, 5], [5, 11]]
    check_against_reference(replicas(mirrored, name), name)


def check_sampled(outputs):
    """Partial FC per shard: K_r = ceil(0.7 C_r) rows of each shard (every label's row among them) take
    part; the loss and gradients are the unsharded head's softmax over that union."""
    reps = replicas(outputs, "arcface_sampled")
    kernel = np.concatenate([np.asarray(r["kernel"]) for r in reps])
    _, labels, *_ = problem()
    used = np.flatnonzero(np.abs(kernel).sum(1) > 0)  # rows outside the sample get exactly zero
    assert set(labels[:BATCH]) <= set(used)
    assert [np.sum(used < 5), np.sum(used >= 5)] == [np.ceil(SAMPLE_RATE * 5), np.ceil(SAMPLE_RATE * 6)]
    check_against_reference(reps, "arcface", columns=used)


def test_mirrored_partial_fc_per_shard(mirrored):
    check_sampled(mirrored)


def reference_training():
    """Two Keras-SGD steps of Dense + ArcFace (unsharded) over the 2 global batches: losses, weights, matrix."""
    import keras
    import tensorflow as tf

    x, labels, dense_k, dense_b, centres = problem()
    backbone = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(D)])
    backbone.set_weights([dense_k, dense_b])
    head = make_head("arcface")
    head.build((None, D))
    head.kernel.assign(centres.T)
    optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    variables = [*backbone.trainable_variables, head.kernel]
    losses = []
    for step in range(2):
        xb, yb = x[step * BATCH:(step + 1) * BATCH], labels[step * BATCH:(step + 1) * BATCH]
        with tf.GradientTape() as tape:
            logits = head([backbone(xb, training=True), yb], training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, logits, from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        losses.append(float(loss))
    return losses, backbone.get_weights(), head.kernel.numpy().T


def check_training(outputs):
    losses, weights, centres = reference_training()
    for out in outputs:  # every worker: the same losses, the same backbone, the same gathered matrix
        train = out["train"]
        np.testing.assert_allclose(train["losses"], losses, **TOL)
        for got, want in zip(train["weights"], weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(train["centres"], centres, rtol=1e-5, atol=2e-5)
        assert not np.allclose(train["centres"], problem()[-1])  # it trained
        assert out["restored"] and out["momentum_restored"]


def test_mirrored_class_sharded_loop_equals_keras_sgd_on_one_device(mirrored):
    check_training(mirrored)
    # ShardCheckpoint(every_steps=1, keep=1): step 1's files removed, step 2's shard 0 and 1 kept.
    assert {c.split("/")[0] for c in mirrored[0]["checkpoints"]} == {"step-000000002"}
    assert mirrored[0]["saved_rows"]  # saved_rows re-reads rows across shard files (re-sharding)
    assert {c.split("/")[1].split(".")[0] for c in mirrored[0]["checkpoints"]} == {
        "class-shard-00000-of-00002", "class-shard-00001-of-00002"}
    assert mirrored[0]["prefixes"] == ["class-shard-00000-of-00002", "class-shard-00001-of-00002"]


def test_initial_rows_do_not_depend_on_the_number_of_shards(mirrored):
    from keras_facemargin.training.class_sharding import initial_rows

    full = initial_rows(0, C, D, seed=7).numpy()
    out = mirrored[0]
    got = np.concatenate([np.asarray(out["initial"][str(r)]) for r in out["replica_ids"]])
    np.testing.assert_array_equal(got, full)
    np.testing.assert_array_equal(initial_rows(4090, 4100, 3, seed=7).numpy(), initial_rows(0, 4100, 3, seed=7)[4090:])


def test_two_loopback_workers_equal_single_device(multiworker):
    assert [o["replicas"] for o in multiworker] == [2, 2]
    assert [o["replica_ids"] for o in multiworker] == [[0], [1]]
    check_against_reference(replicas(multiworker, "arcface"), "arcface")
    check_sampled(multiworker)
    check_training(multiworker)
    prefixes = [o["prefixes"] for o in multiworker]  # each worker wrote its own shard
    assert prefixes == [["class-shard-00000-of-00002"], ["class-shard-00001-of-00002"]]


def test_one_replica_default_strategy_equals_the_unsharded_head(tmp_path):
    """N = 1 (no strategy): one shard of all C rows, no collective; the same loss and gradients."""
    import tensorflow as tf

    from keras_facemargin.errors import ClassShardingError
    from keras_facemargin.training import class_sharding as cs

    x, labels, dense_k, dense_b, centres = problem()
    shards = cs.ClassShards(tf.distribute.get_strategy(), C, D)
    assert shards.bounds == [(0, C)] and shards.replica_ids == [0]
    shards.assign(centres)
    kernel, first = shards.local()
    emb = tf.constant(x[:BATCH] @ dense_k + dense_b)
    with tf.GradientTape() as tape:
        tape.watch(emb)
        loss = cs.sharded_margin_loss(make_head("arcface"), emb, labels[:BATCH], kernel, first, C)
    g_emb, g_w = tape.gradient(loss, [emb, kernel])
    ref_loss, ref_emb, _, _, ref_w = reference("arcface")
    np.testing.assert_allclose(float(loss), ref_loss, **TOL)
    np.testing.assert_allclose(g_emb.numpy(), ref_emb, **TOL)
    np.testing.assert_allclose(g_w.numpy(), ref_w, **TOL)
    np.testing.assert_array_equal(shards.gather_centres(), centres)
    with pytest.raises(ClassShardingError, match="another replica count"):
        cs.restore_shards(shards, tmp_path)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope(), pytest.raises(ClassShardingError, match="outside"):
        cs.ClassShards(tf.distribute.get_strategy(), C, D)


def test_unsupported_heads_and_bounds_are_refused():
    from keras_facemargin.errors import ClassShardingError
    from keras_facemargin.layers import CurricularMarginDense, KappaMarginDense, SoftmaxDense, SphereMarginDense
    from keras_facemargin.training.class_sharding import check_shardable, memory_per_replica, shard_bounds

    assert shard_bounds(11, 2) == [(0, 5), (5, 11)]
    assert shard_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    with pytest.raises(ClassShardingError, match="at least one class"):
        shard_bounds(3, 4)
    for name in HEADS:
        check_shardable(make_head(name))
    kappa = KappaMarginDense(10, [1] * 10, num_samples=100)
    for head in (SoftmaxDense(10), CurricularMarginDense(10), SphereMarginDense(10), kappa):
        with pytest.raises(ClassShardingError):
            check_shardable(head)
    assert memory_per_replica(10_000_000, 512, 8) == 1_250_000 * 512 * 4 * 2
