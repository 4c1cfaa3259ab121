"""Class-sharded margin softmax on TensorFlow: the class-centre matrix split over the replicas.

Data parallel for the backbone, model parallel for the head, as insightface's PartialFC v2 does
with torch.distributed. Under `MirroredStrategy` or `MultiWorkerMirroredStrategy` with N replicas
in sync, replica r holds rows `[C*r//N, C*(r+1)//N)` of the (C, d) class-centre matrix (C need not
be divisible by N: shard sizes differ by at most one row, nothing is padded) and the momentum of
those rows. One training step on each replica:

1. the backbone embeds the replica's local batch (mirrored variables, as in `CustomLoop`);
2. embeddings and labels of all replicas are all-gathered (`ReplicaContext.all_gather`), so every
   replica sees the global batch B;
3. each replica computes the (B, C_r) logits of its own rows through the head protocol
   (`FaceHead.sampled_logits`): cosines, then the head's margin on the target column of the rows
   whose label falls in the shard (rows labelled elsewhere get no margin here);
4. the softmax denominator is combined across replicas: the row maxima are all-gathered (the
   stabilising shift, no gradient), the sums of `exp(logit - max)` are all-reduced (SUM), and the
   target logit, found on the replica that owns the label, is all-reduced (SUM, zero elsewhere);
5. the loss is the mean cross-entropy over the global batch; each replica returns 1/N of it, so
   the N replica losses sum to the global loss (`CustomLoop`'s convention).

Gradients are those of the single-device loss: TF's all-reduce SUM is its own adjoint and the
all-gather's gradient is the all-reduced upstream gradient sliced to the replica's own rows, so the
gradient w.r.t. each replica's local embeddings (hence the mirrored backbone, after the optimizer's
all-reduce) and w.r.t. its own shard are exact; the shard gradient is never communicated. Per step
the network carries B x d embeddings and their gradient, and a few B-vectors, never C x d values.

With `sample_rate < 1` each shard trains on a Partial FC sample of its own rows (PartialFC v2):
every row of the shard that is a label of the global batch, plus uniformly random others
(`layers.class_sampling.sample_classes` on the shard's rows: hashes of (seed, shard, step), O(K_r log K_r),
no `top_k` over the shard), `ceil(sample_rate * C_r)` rows in all, so the loss is the softmax over
the union of the shards' samples.

The shards are N plain `tf.Variable`s, one per local device (`strategy.extended.worker_devices`),
created outside any strategy scope (a variable made inside would be mirrored); a replica finds its
own by its static `replica_id_in_sync_group`. A trainable on-read variable (the only per-replica
variable kind of `tf.distribute`) does not exist in TF 2.21, and its checkpoint would keep one
replica's value. Each worker therefore checkpoints its own shards (`save_shards` / `restore_shards`,
one file per shard) and `gather_centres` reassembles the (C, d) matrix for export.

Heads: the cosine heads whose margin changes only the target cosine (`CosineDense` / NormFace,
ArcFace, CosFace, the combined margin, LDAM, ExpFace, X2-Softmax: every `CosineDense` subclass that
overrides no more than `target_logit`) and `SoftmaxDense(use_bias=False)`. The head supplies the
math only; its own kernel is never built or used.

Example (2 GPUs, or 2 workers with TF_CONFIG and MultiWorkerMirroredStrategy):
    >>> strategy = tf.distribute.MirroredStrategy()
    >>> shards = ClassShards(strategy, num_classes=85742, embedding_dim=512)   # outside the scope
    >>> with strategy.scope():
    ...     backbone = iresnet50()
    ...     optimizer = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)
    >>> loop = ClassShardedLoop(backbone, ArcMarginDense(85742), shards, optimizer, strategy,
    ...                         global_batch_size=512)
    >>> loop.fit(lambda epoch: dataset, epochs=24, steps_per_epoch=11372)
    >>> save_shards(shards, "run/class_shards", loop.shard_optimizer)          # on every worker
"""

import contextlib
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_facemargin.errors import ClassShardingError
from keras_facemargin.layers.base import FaceHead
from keras_facemargin.layers.class_sampling import sample_classes
from keras_facemargin.layers.cosine_dense import CosineDense
from keras_facemargin.layers.softmax import SoftmaxDense
from keras_facemargin.training.custom_loop import CustomLoop

#: Rows per block of the initial values: row i of the matrix is the same for any number of shards.
INIT_BLOCK = 4096
#: Methods that must be CosineDense's own for a cosine head to be sharded (only `target_logit` may differ).
_COSINE_METHODS = ("call", "cosine", "logits_from_cosine", "apply_margin", "sampled_logits", "partial_fc_logits",
                   "observe_batch", "_prepare_labels", "check_extra_input")


def shard_bounds(num_classes, num_shards):
    """`[(lo, hi), ...]`: the class rows of each shard, `lo = C*r//N` (sizes differ by at most one)."""
    if num_shards < 1 or num_classes < num_shards:
        raise ClassShardingError(
            f"Cannot split {num_classes} classes over {num_shards} replicas: every replica needs at least one class."
        )
    return [(num_classes * r // num_shards, num_classes * (r + 1) // num_shards) for r in range(num_shards)]


def check_shardable(head):
    """Raise `ClassShardingError` unless `head`'s logits can be computed shard by shard (see the module doc)."""
    if not isinstance(head, FaceHead):
        raise ClassShardingError(f"`head` must be a keras_facemargin head (FaceHead). Received: {type(head).__name__}")
    if isinstance(head, SoftmaxDense) and type(head).sampled_logits is SoftmaxDense.sampled_logits:
        if head.use_bias:
            raise ClassShardingError("SoftmaxDense is sharded without its bias: use SoftmaxDense(use_bias=False).")
        return
    if isinstance(head, CosineDense) and head.extra_input is None and not head.required_callbacks:
        own = [m for m in _COSINE_METHODS if getattr(type(head), m) is not getattr(CosineDense, m)]
        if not own:
            return
    raise ClassShardingError(
        f"{type(head).__name__} cannot be class-sharded: only heads whose margin changes the target cosine alone "
        "(CosineDense subclasses overriding just `target_logit`: ArcFace, CosFace, NormFace, ...) and "
        "SoftmaxDense(use_bias=False) are supported. Heads with state, feature norms or changed negatives are not."
    )


def initial_rows(lo, hi, embedding_dim, seed=0, stddev=0.01, dtype="float32"):
    """Rows `[lo, hi)` of the initial class matrix: normal(0, stddev) (insightface PartialFC's init).

    Drawn in blocks of `INIT_BLOCK` rows with stateless seeds `(seed, block)`, so row i is the same
    whatever the number of shards (a single-device reference can be built from `initial_rows(0, C)`).
    """
    blocks = []
    for b in range(lo // INIT_BLOCK, (hi - 1) // INIT_BLOCK + 1):
        block = tf.random.stateless_normal((INIT_BLOCK, embedding_dim), seed=[seed, b], stddev=stddev, dtype=dtype)
        start, stop = max(lo - b * INIT_BLOCK, 0), min(hi - b * INIT_BLOCK, INIT_BLOCK)
        blocks.append(block[start:stop])
    return tf.concat(blocks, axis=0)


def _replica_ids(strategy):
    """The global replica ids of this worker's replicas, in `worker_devices` order."""
    @tf.function
    def ids():
        return strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group)

    return [int(v) for v in strategy.experimental_local_results(ids())]


def _worker_devices(strategy):
    """This worker's replica devices; [None] (no placement) for the default strategy."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:
        return [None]


def _on(device):
    return tf.device(device) if device is not None else contextlib.nullcontext()


def _static_replica_id(ctx):
    rid = tf.get_static_value(ctx.replica_id_in_sync_group)
    if rid is None:
        raise ClassShardingError(
            "Class sharding needs a static replica id (MirroredStrategy / MultiWorkerMirroredStrategy)."
        )
    return int(rid)


class ClassShards:
    """The class-centre matrix split over the replicas of `strategy`: this worker's shards.

    Create it outside `strategy.scope()` (inside, `tf.Variable` would be mirrored). Every worker
    creates the same object; each holds only the rows of its own replicas.

    Args:
        strategy: a `MirroredStrategy` / `MultiWorkerMirroredStrategy` (or the default strategy, N=1).
        num_classes: C.
        embedding_dim: d.
        seed: seed of the initial values (`initial_rows`).
        stddev: their standard deviation.
        dtype: variable dtype.

    Attributes:
        num_shards: N, the replicas in sync.
        bounds: `shard_bounds(C, N)`, the rows of every shard (global replica order).
        replica_ids: the global ids of this worker's replicas.
        kernels: `{replica id: tf.Variable (C_r, d)}` of this worker, each on its replica's device.

    Example:
        >>> shards = ClassShards(strategy, 1000, 128)
        >>> shards.kernels[0].shape       # replica 0 of 2: rows [0, 500)
        TensorShape([500, 128])
    """

    def __init__(self, strategy, num_classes, embedding_dim, seed=0, stddev=0.01, dtype="float32"):
        if tf.distribute.has_strategy():
            raise ClassShardingError(
                "Create ClassShards outside `strategy.scope()`: its variables must not be mirrored."
            )
        self.strategy = strategy
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.num_shards = strategy.num_replicas_in_sync
        self.bounds = shard_bounds(self.num_classes, self.num_shards)
        self.replica_ids = _replica_ids(strategy)
        self.devices = dict(zip(self.replica_ids, _worker_devices(strategy)))
        self.kernels = {}
        for rid in self.replica_ids:
            lo, hi = self.bounds[rid]
            with _on(self.devices[rid]):
                self.kernels[rid] = tf.Variable(
                    initial_rows(lo, hi, self.embedding_dim, seed, stddev, dtype), name=f"class_shard_{rid}"
                )

    def local(self, ctx=None):
        """`(kernel, first_class)` of the calling replica (replica context)."""
        rid = _static_replica_id(ctx or tf.distribute.get_replica_context())
        return self.kernels[rid], self.bounds[rid][0]

    def assign(self, centres):
        """Set every local shard from `centres`: a (C, d) array, or `(lo, hi) -> rows` (e.g. read from a file)."""
        for rid, kernel in self.kernels.items():
            lo, hi = self.bounds[rid]
            rows = centres(lo, hi) if callable(centres) else np.asarray(centres)[lo:hi]
            kernel.assign(tf.cast(rows, kernel.dtype))

    def gather_centres(self):
        """The whole (C, d) matrix as NumPy, all-gathered from every replica.

        A collective: under `MultiWorkerMirroredStrategy` every worker must call it. It needs
        C x d host memory on every worker; for export, not for training.
        """
        @tf.function
        def gather():
            def fn():
                ctx = tf.distribute.get_replica_context()
                kernel, _ = self.local(ctx)
                if ctx.num_replicas_in_sync == 1:
                    return tf.identity(kernel)
                return ctx.all_gather(tf.identity(kernel), axis=0)

            return self.strategy.run(fn)

        return np.asarray(self.strategy.experimental_local_results(gather())[0])


def sample_size(sample_rate, rows):
    """K_r = ceil(sample_rate * C_r) rows of a shard in its Partial FC sample (at least 1, at most C_r)."""
    return max(1, min(rows, math.ceil(round(sample_rate * rows, 9))))


def _sampled_rows(owned_local, rows, num_sample, step, seed, shard):
    """Partial FC per shard: the sorted local rows (K_r,) of the sample: every row in `owned_local`
    (the shard's positives; `rows` marks a label of another shard), then uniformly random others.

    `layers.class_sampling.sample_classes` (O(K_r log K_r), no `top_k` over the shard) over the
    `rows + 1` ids of the shard plus the marker, which is always a positive (appended) and the
    largest id: the first K_r of its K_r + 1 sorted classes are the sample. Hashes of (seed, shard,
    step), no RNG state: the same on a rerun and after a resume.
    """
    positives = tf.concat([tf.cast(owned_local, "int32"), tf.constant([rows], "int32")], 0)
    classes, num_positive = sample_classes(positives, step, rows + 1, num_sample + 1, seed=seed * 1_000_003 + shard)
    tf.debugging.assert_less_equal(
        num_positive - 1, num_sample,
        message="A shard's global batch holds more distinct classes than its Partial FC sample; raise sample_rate.",
    )
    return classes[:num_sample]


def sharded_margin_loss(head, embeddings, labels, kernel, first_class, num_classes, sample_rate=1.0, step=0,
                        seed=0):
    """This replica's share (1/N) of the margin-softmax loss over the global batch; call in replica context.

    Args:
        head: a shardable head (`check_shardable`): the cosine -> logit math.
        embeddings: the replica's local embeddings (B_r, d).
        labels: their int class ids (B_r,) or (B_r, 1), in [0, C).
        kernel: the replica's shard (C_r, d) (`ClassShards.local()`).
        first_class: the class id of the shard's first row.
        num_classes: C.
        sample_rate: Partial FC per shard: the fraction of each shard's rows in the softmax (1: all).
        step: int step counter of the sampling (with `sample_rate` < 1).
        seed: Python int seed of the sampling.

    Returns:
        A float32 scalar: the mean cross-entropy of the global batch divided by N (the replica
        losses sum to it); its gradients w.r.t. `embeddings` and `kernel` are this replica's parts
        of the single-device gradient.
    """
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync
    labels = tf.cast(tf.reshape(labels, [-1]), "int32")
    tf.debugging.assert_less(labels, num_classes, message="labels must be < num_classes")
    tf.debugging.assert_non_negative(labels, message="labels must be >= 0")
    if n > 1:
        embeddings, labels = ctx.all_gather(embeddings, axis=0), ctx.all_gather(labels, axis=0)
    rows = kernel.shape[0]
    local = labels - first_class
    owned = (local >= 0) & (local < rows)
    centres = kernel
    if sample_rate < 1.0:
        num_sample = sample_size(sample_rate, rows)
        shard = _static_replica_id(ctx)
        picked = _sampled_rows(tf.where(owned, local, rows), rows, num_sample, step, seed, shard)
        centres = tf.gather(kernel, picked)  # its gradient: IndexedSlices of the K_r sampled rows
        local = tf.cast(tf.searchsorted(picked, tf.where(owned, local, 0)), "int32")
        rows = num_sample
    columns = tf.where(owned, local, rows)  # rows labelled elsewhere point at a dummy zero centre, dropped below
    w = tf.concat([tf.cast(centres, head.compute_dtype), tf.zeros((1, centres.shape[1]), head.compute_dtype)], 0)
    classes = tf.range(rows + 1, dtype="int32")  # unused by the supported heads (no class-indexed bias)
    logits = head.sampled_logits(embeddings, w, classes, columns, labels, training=True)[:, :rows]
    logits = tf.cast(logits, "float32")
    shift = tf.reduce_max(logits, axis=1)
    if n > 1:
        shift = tf.reduce_max(ctx.all_gather(tf.stop_gradient(shift)[None], axis=0), axis=0)
    shift = tf.stop_gradient(shift)
    sum_exp = tf.reduce_sum(tf.exp(logits - shift[:, None]), axis=1)
    target = tf.gather(logits, tf.minimum(columns, rows - 1), axis=1, batch_dims=1)
    target = tf.where(owned, target, 0.0)
    if n > 1:
        sum_exp = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sum_exp)
        target = ctx.all_reduce(tf.distribute.ReduceOp.SUM, target)
    per_example = tf.math.log(sum_exp) + shift - target
    return tf.reduce_mean(per_example) / n


class ShardSGD:
    """SGD with momentum and decoupled weight decay for `ClassShards`, applied per replica (no collective).

    The update is Keras 3's `SGD` (`weight_decay` first, `w -= lr * wd * w`; then
    `m = momentum * m - lr * g`, `w += m`, or Nesterov), so with `learning_rate` set to the
    backbone's Keras optimizer the shards move exactly as the class matrix would under that
    optimizer on one device. Momentum rows live with their shard.

    Args:
        shards: the `ClassShards`.
        learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule` (called with
            `iterations`), or a Keras optimizer whose current learning rate is followed.
        momentum, nesterov, weight_decay: as in `keras.optimizers.SGD`.
    """

    def __init__(self, shards, learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=None):
        if tf.distribute.has_strategy():
            raise ClassShardingError("Create ShardSGD outside `strategy.scope()`: its variables must not be mirrored.")
        self.shards = shards
        self.learning_rate = learning_rate
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay or 0.0)
        self.iterations, self.momenta = {}, {}
        for rid, kernel in shards.kernels.items():
            with _on(shards.devices[rid]):
                self.iterations[rid] = tf.Variable(0, dtype="int64", name=f"class_shard_iterations_{rid}")
                if self.momentum:
                    self.momenta[rid] = tf.Variable(tf.zeros_like(kernel), name=f"class_shard_momentum_{rid}")

    def current_learning_rate(self, rid):
        lr = self.learning_rate
        if isinstance(lr, keras.optimizers.Optimizer):
            return tf.cast(lr.learning_rate, "float32")
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return tf.cast(lr(self.iterations[rid]), "float32")
        return tf.constant(float(lr), "float32")

    def apply(self, grad, ctx=None, learning_rate=None):
        """Update the calling replica's shard with its gradient `grad` (dense or IndexedSlices)."""
        rid = _static_replica_id(ctx or tf.distribute.get_replica_context())
        kernel = self.shards.kernels[rid]
        lr = tf.cast(self.current_learning_rate(rid) if learning_rate is None else learning_rate, kernel.dtype)
        grad = tf.convert_to_tensor(grad)
        if self.weight_decay:
            kernel.assign_sub(kernel * (lr * self.weight_decay))
        if self.momentum:
            m = self.momenta[rid]
            m.assign(self.momentum * m - lr * grad)
            kernel.assign_add(self.momentum * m - lr * grad if self.nesterov else m)
        else:
            kernel.assign_sub(lr * grad)
        self.iterations[rid].assign_add(1)

    def variables(self, rid):
        return [v for v in (self.momenta.get(rid), self.iterations[rid]) if v is not None]


class ClassShardedLoop(CustomLoop):
    """`CustomLoop` (same `fit`, callbacks, loss convention) with the class matrix in `ClassShards`.

    `model` is the backbone (images -> embeddings), mirrored; the head's centres are the shards.
    Each step: backbone forward, `sharded_margin_loss`, the backbone's gradient applied by
    `optimizer` (all-reduced by Keras), each shard's gradient applied locally by `shard_optimizer`.

    Args:
        model: the embedding model, created in `strategy.scope()`.
        head: a shardable head (`check_shardable`), e.g. `ArcMarginDense(C)`; unbuilt is fine.
        shards: `ClassShards` of the same strategy, with `num_classes == head.num_classes`.
        optimizer: the backbone's Keras optimizer, created in `strategy.scope()`.
        strategy: the strategy.
        global_batch_size: images per step over all replicas (kept for `CustomLoop`; the loss is
            the mean over the gathered batch).
        shard_optimizer: a `ShardSGD`; default: Keras-SGD semantics following `optimizer`'s
            learning rate, momentum, Nesterov flag and weight decay when it is a `keras.optimizers.SGD`.
        sample_rate, seed: Partial FC per shard (see `sharded_margin_loss`).
    """

    def __init__(self, model, head, shards, optimizer, strategy, global_batch_size, shard_optimizer=None,
                 sample_rate=1.0, seed=0):
        check_shardable(head)
        if head.num_classes != shards.num_classes:
            raise ClassShardingError(f"head.num_classes={head.num_classes} != shards.num_classes={shards.num_classes}")
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ClassShardingError("ClassShardedLoop does not support LossScaleOptimizer (loss scaling).")
        if not 0.0 < sample_rate <= 1.0:
            raise ClassShardingError(f"`sample_rate` must be in (0, 1]. Received: {sample_rate!r}")
        super().__init__(model, optimizer, strategy, global_batch_size)
        if not optimizer.built:  # slots made inside the first traced step would be lifted out of a cond (fails)
            with strategy.scope():
                optimizer.build(model.trainable_variables)
        self.head, self.shards = head, shards
        self.sample_rate, self.seed = float(sample_rate), int(seed)
        if shard_optimizer is None:
            sgd = isinstance(optimizer, keras.optimizers.SGD)
            shard_optimizer = ShardSGD(
                shards, learning_rate=optimizer, momentum=float(optimizer.momentum) if sgd else 0.0,
                nesterov=bool(optimizer.nesterov) if sgd else False, weight_decay=optimizer.weight_decay,
            )
        self.shard_optimizer = shard_optimizer

    def _replica_step(self, inputs):
        x, y = inputs
        ctx = tf.distribute.get_replica_context()
        kernel, first = self.shards.local(ctx)
        rid = _static_replica_id(ctx)
        model, optimizer = self.model, self.optimizer
        lr = self.shard_optimizer.current_learning_rate(rid)  # before the optimizer steps its iterations
        with tf.GradientTape() as tape:
            embeddings = model(x, training=True)
            loss = sharded_margin_loss(self.head, embeddings, y, kernel, first, self.shards.num_classes,
                                       self.sample_rate, self.shard_optimizer.iterations[rid], self.seed)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, [*variables, kernel])
        factor = getattr(optimizer, "loss_scale_factor", None)
        shard_grad = grads[-1] if not factor else grads[-1] / factor
        optimizer.apply_gradients(zip(grads[:-1], variables))
        self.shard_optimizer.apply(shard_grad, ctx, learning_rate=lr)
        return loss


def _shard_path(directory, rid, num_shards):
    return os.path.join(os.fspath(directory), f"class-shard-{rid:05d}-of-{num_shards:05d}")


def _shard_checkpoint(shards, rid, shard_optimizer):
    items = {"centres": shards.kernels[rid]}
    if shard_optimizer is not None:
        items.update({"iterations": shard_optimizer.iterations[rid]})
        if rid in shard_optimizer.momenta:
            items["momentum"] = shard_optimizer.momenta[rid]
    return tf.train.Checkpoint(**items)


def save_shards(shards, directory, shard_optimizer=None):
    """Write this worker's shards (and their momentum) to `directory`, one checkpoint per shard.

    Call on every worker (not only the chief): each writes `class-shard-RRRRR-of-NNNNN.*` for its
    own replicas. On a multi-host cluster `directory` is shared storage, or each host keeps its own
    files and restores them on the same host. Returns the written prefixes.
    """
    os.makedirs(os.fspath(directory), exist_ok=True)
    return [_shard_checkpoint(shards, rid, shard_optimizer).write(_shard_path(directory, rid, shards.num_shards))
            for rid in shards.replica_ids]


def restore_shards(shards, directory, shard_optimizer=None):
    """Read this worker's shards from `save_shards` files of a run with the same number of replicas."""
    for rid in shards.replica_ids:
        path = _shard_path(directory, rid, shards.num_shards)
        if not tf.io.gfile.exists(path + ".index"):
            raise ClassShardingError(
                f"No class shard {rid} of {shards.num_shards} in {directory} (saved with another replica count? "
                "restore on the same N, or rebuild from gather_centres() / ClassShards.assign)."
            )
        _shard_checkpoint(shards, rid, shard_optimizer).read(path).assert_consumed()


def saved_rows(directory, num_classes, num_shards, name="centres"):
    """`(lo, hi) -> rows` read from the `save_shards` files of a run with `num_shards` replicas.

    For re-sharding onto another replica count: `ClassShards.assign(saved_rows(old_dir, C, old_n))`
    (and `name="momentum"` for the momentum). Each call reads only the old shards it overlaps
    (files of all old shards must be readable, e.g. on shared storage).
    """
    bounds = shard_bounds(num_classes, num_shards)
    key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"

    def rows(lo, hi):
        parts = []
        for r, (a, b) in enumerate(bounds):
            if a < hi and lo < b:
                values = tf.train.load_checkpoint(_shard_path(directory, r, num_shards)).get_tensor(key)
                parts.append(values[max(lo, a) - a:min(hi, b) - a])
        return np.concatenate(parts)

    return rows


class ShardCheckpoint(keras.callbacks.Callback):
    """Save this worker's shards (and their momentum) at every epoch end and every `every_steps` steps.

    Each save goes to `directory/step-SSSSSSSSS/` (S: the shards' step counter, so it matches the
    backbone checkpoint of the same step); the newest `keep` such folders are kept. Use it on every
    worker of a multi-worker run (each saves its own shards), next to the backbone's checkpoint.
    `ShardCheckpoint.latest(directory)` is the folder to `restore_shards` from.

    Args:
        shards, shard_optimizer: what to save (`ClassShardedLoop.shards`, `.shard_optimizer`).
        directory: the root folder.
        every_steps: also save every that many steps (None: epoch ends only).
        keep: folders kept.
    """

    def __init__(self, shards, shard_optimizer, directory, every_steps=None, keep=2):
        super().__init__()
        self.shards, self.shard_optimizer = shards, shard_optimizer
        self.directory, self.every_steps, self.keep = os.fspath(directory), every_steps, int(keep)

    def _step(self):
        return int(next(iter(self.shard_optimizer.iterations.values())).numpy())

    def save(self):
        folder = os.path.join(self.directory, f"step-{self._step():09d}")
        save_shards(self.shards, folder, self.shard_optimizer)
        for old in sorted(tf.io.gfile.glob(os.path.join(self.directory, "step-*")))[:-self.keep]:
            mine = [_shard_path(old, r, self.shards.num_shards) for r in self.shards.replica_ids]
            for path in (p for m in mine for p in tf.io.gfile.glob(m + ".*")):
                tf.io.gfile.remove(path)  # only this worker's files: another worker removes its own
        return folder

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and self._step() % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    @staticmethod
    def latest(directory):
        """The newest `step-*` folder under `directory`, or None."""
        found = sorted(tf.io.gfile.glob(os.path.join(os.fspath(directory), "step-*")))
        return found[-1] if found else None


def memory_per_replica(num_classes, embedding_dim, num_replicas, momentum=True, bytes_per_value=4):
    """Bytes of class centres (+ momentum) each replica holds: ceil(C/N) x d x 4 (x 2 with momentum)."""
    return math.ceil(num_classes / num_replicas) * embedding_dim * bytes_per_value * (2 if momentum else 1)
