"""Partial FC: margin softmax on sampled class centres (An et al., "Partial FC: Training 10 Million
Identities on a Single Machine", ICCVW 2021; insightface `PartialFC_V2` semantics)."""

import math
from fractions import Fraction

import keras
from keras import ops

from keras_facemargin.errors import SampleBudgetError  # noqa: F401  (re-exported)
from keras_facemargin.layers import _state
from keras_facemargin.layers.class_sampling import sample_classes  # noqa: F401  (re-exported)
from keras_facemargin.layers.base import FaceHead, embedding_shape, prepare_indices, split_inputs
from keras_facemargin.layers.cosine_dense import _is_real


def sample_budget(sample_rate, num_classes):
    """`ceil(sample_rate * num_classes)`, computed exactly on the decimal value of `sample_rate`."""
    return min(num_classes, math.ceil(Fraction(repr(float(sample_rate))) * num_classes))


def _num_replicas():
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


@keras.saving.register_keras_serializable(package="keras_facemargin")
class PartialFC(keras.layers.Layer):
    """Partial FC wrapper: train any margin head on a sample of the class centres.

    An et al., ICCVW 2021 (insightface `PartialFC_V2`). At each training step
    the set S holds every class of the global batch (all replicas and workers,
    all-gathered) plus uniformly random other classes, `K = ceil(sample_rate *
    C)` in all; every replica computes the same S. Logits are computed only on
    S (B x K), the labels are remapped into S, and the head's margin is applied
    to the target column. Class-indexed state is read and written with the TRUE
    class id (KappaFace psi and accumulators, LDAM margins, Center-loss
    centres; the official KappaFace code indexes psi with the remapped id);
    KappaFace's memory buffer and accumulators, CurricularFace's t and
    AdaFace's norm statistics see the whole batch, as without sampling.

    Sampling is a hash of (draw or class id, step counter, seed), not stateful
    RNG, in O(K log K) per step (`class_sampling.sample_classes`): the counter `sample_step` is a layer variable, checkpointed with the model
    and incremented by every training call, so a resumed run draws the same
    sets. Without labels, with `training=False`, or with `sample_rate=1` the
    wrapped head runs unchanged on all C classes (inference, export and
    validation are those of the head; `sample_rate=1` is the full head
    exactly, kernel layout included).

    Gradients: with `sample_rate < 1` the wrapped head's kernel is stored
    class-major, (C, d), and the sampled rows are read with a gather, so on
    TensorFlow its gradient is an `IndexedSlices` of K rows: `MirroredStrategy`
    and `MultiWorkerMirroredStrategy` exchange K x d values per replica instead
    of a dense C x d all-reduce, and rows outside S get exactly zero gradient.
    What Keras' SGD does with it (checked in Keras 3.15): without momentum it
    applies the update with `scatter_sub` (only the K rows change); with
    momentum the slot update `m = momentum * m - lr * g` densifies the
    gradient after the all-reduce (C x d temporaries), so every row keeps
    moving with its decaying momentum (as torch SGD does in insightface v2);
    decoupled `weight_decay` shrinks every row at every step. A
    `kernel_regularizer` on the head adds a dense gradient.
    `keras_facemargin.training.sparse_sgd.RowSparseSGD` instead reads and
    writes only the sampled rows of the kernel and its momentum (rows not
    sampled stay bit-identical: momentum paused, no decay; insightface
    arcface_torch PartialFC v1's momentum bank); this layer marks its kernel.

    Differences from insightface v2: the class centres are replicated (data
    parallel), not sharded over the GPUs, so each replica holds C x d
    centres and their momentum; K is `ceil`, not `int`, of `sample_rate * C`;
    an over-full batch is refused (below), not given a larger set; the set
    comes from a hash, not `torch.rand`.

    Budget: a global batch with more distinct classes than K is refused, not
    grown as in insightface: eagerly a `SampleBudgetError`, in a TF graph an
    `InvalidArgumentError` with the same message; where neither can be raised
    (XLA, jitted JAX) the step's logits are NaN. (A fixed K keeps the shapes
    static.) It can only happen when the global batch exceeds K.

    Loss: the training logits are over S in sorted class order; train with
    `PartialFCLoss(layer)`, which remaps `y_true` into S (and leaves labels
    unchanged for full-width logits).

    Every head composes, through the head protocol of
    `keras_facemargin.layers.base` only: the wrapper gathers the sampled rows
    of `head.centre_layer().kernel`, calls `head.observe_batch` with the true
    class ids (state), then `head.sampled_logits` (the logits over S). The
    `CosineDense` heads, `SoftmaxDense` and `CenterLossDense` (sampled W and
    bias), `SubFaceDense` (subspace of the sampled rows) and
    `KappaMarginDense` implement it. A custom head that overrides `call` or
    `logits_from_cosine` needs a `partial_fc_logits(cos, columns, class_ids,
    embeddings, training)` method (`head.check_partial_fc_support()`).

    Args:
        head: an unbuilt head layer (or its serialised config).
        sample_rate: fraction of the classes in S, in (0, 1] (Partial FC: 0.1).
        seed: integer seed of the sampling.
        **kwargs: layer arguments.

    Example:
        >>> head = PartialFC(ArcMarginDense(360232), sample_rate=0.1)
        >>> model = FaceRecognizer(backbone, head)
        >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=PartialFCLoss(head))
    """

    def __init__(self, head, sample_rate=0.1, seed=0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(head, dict):  # unbuilt: this layer builds it (class-major) with its own build_config
            head = keras.saving.deserialize_keras_object(_unbuilt(head))
        if not _is_real(sample_rate) or not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"`sample_rate` must be a number in (0, 1]. Received: sample_rate={sample_rate!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        if not isinstance(head, FaceHead):
            raise ValueError(
                "`head` must be a keras_facemargin head (a keras_facemargin.layers.base.FaceHead: a "
                f"CosineDense subclass, SoftmaxDense, CenterLossDense or SubFaceDense). Received: {type(head).__name__}"
            )
        head.check_partial_fc_support()
        core = head.centre_layer()
        self.head = head
        self.core = core
        self.sample_rate = float(sample_rate)
        self.seed = seed
        self.num_classes = core.num_classes
        self.num_sample = sample_budget(self.sample_rate, self.num_classes)
        self.sampled = self.sample_rate < 1.0
        if self.sampled:
            if core.built:
                raise ValueError(
                    "PartialFC needs an unbuilt head: with sample_rate < 1 it stores the class centres "
                    "class-major, (C, d). Wrap the head before its first call (to reuse trained (d, C) "
                    "centres, assign their transpose to `partial_fc.core.kernel` after building)."
                )
            core.class_major_kernel = True

    def build(self, input_shape):
        if not self.head.built:
            self.head.build(input_shape)
        if self.sampled:
            self.core.kernel._kfm_row_sparse = True  # training.sparse_sgd.RowSparseSGD updates its sampled rows only
            # on_read: every replica writes its own copy (they compute the same values), no sync.
            kw = dict(trainable=False, synchronization="on_read", aggregation="only_first_replica")
            self.sample_step = keras.Variable(initializer="zeros", shape=(), dtype="int32", name="sample_step", **kw)
            self.sampled_classes = keras.Variable(
                initializer="zeros", shape=(self.num_sample,), dtype="int32", name="sampled_classes", **kw
            )

    def call(self, inputs, training=None):
        embeddings, labels, extra = split_inputs(inputs)
        if labels is None or not training or not self.sampled:
            return self.head(inputs, training=training)
        return self._sampled_logits(embeddings, labels, extra, training)

    # -- the sampled step -----------------------------------------------------------
    def _sampled_logits(self, embeddings, labels, extra, training):
        core, k = self.core, self.num_sample
        labels = prepare_indices(labels, self.num_classes, "labels")
        everything = _state.all_gather(labels)
        step = _state.read(self.sample_step)
        classes, num_positive = sample_classes(everything, step, self.num_classes, k, self.seed)
        overflow = self._check_budget(num_positive, labels)
        columns = ops.cast(ops.searchsorted(classes, ops.cast(labels, "int32")), labels.dtype)
        if _state.state_updates_enabled():
            self.sample_step.assign(step + 1)
            self.sampled_classes.assign(classes)
        # A gather of rows: on TF its gradient is IndexedSlices of the K sampled rows.
        w = ops.cast(_state.gather_rows(core.kernel, classes), core.compute_dtype)
        if training and _state.state_updates_enabled():
            self.head.observe_batch(embeddings, labels, extra)  # true class ids
        logits = self.head.sampled_logits(embeddings, w, classes, columns, labels, training)
        if overflow is not None:
            logits = logits + ops.where(overflow, float("nan"), 0.0)
        return logits

    def _check_budget(self, num_positive, labels):
        """None if the batch can never exceed K; else raise / assert / return the overflow flag."""
        batch = labels.shape[0]
        if batch is not None and batch * _num_replicas() <= self.num_sample:
            return None
        message = (
            f"The global batch holds more distinct classes than PartialFC samples (num_sample="
            f"ceil(sample_rate * C)={self.num_sample}); raise `sample_rate` or lower the batch size."
        )
        if _state._is_concrete(num_positive):
            count = int(ops.convert_to_numpy(num_positive))
            if count > self.num_sample:
                raise SampleBudgetError(message[:-1] + f": {count} distinct classes.")
            return None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.debugging.assert_less_equal(num_positive, self.num_sample, message=message)
        return num_positive > self.num_sample

    # -- the loss's view ------------------------------------------------------------
    def loss_labels(self, y_true, y_pred):
        """`y_true` as column indices of `y_pred`: remapped into S for sampled (K-wide) logits."""
        labels = ops.reshape(y_true, (-1,))
        if not keras.backend.standardize_dtype(labels.dtype).startswith("int"):
            labels = ops.cast(labels, "int32")
        if not self.sampled or y_pred.shape[-1] == self.num_classes:
            return labels
        classes = _state.read(self.sampled_classes)
        return ops.cast(ops.searchsorted(classes, ops.cast(labels, classes.dtype)), labels.dtype)

    def compute_output_shape(self, input_shape):
        return (embedding_shape(input_shape)[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "head": keras.saving.serialize_keras_object(self.head),
                "sample_rate": self.sample_rate,
                "seed": self.seed,
            }
        )
        return config


def _unbuilt(config):
    """A serialised head without its build configs (its own and a wrapped head's, e.g. SubFace's)."""
    config = {k: v for k, v in config.items() if k != "build_config"}
    inner = config.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("head"), dict):
        config["config"] = dict(inner, head=_unbuilt(inner["head"]))
    return config


@keras.saving.register_keras_serializable(package="keras_facemargin")
class PartialFCLoss(keras.losses.Loss):
    """Softmax cross-entropy on `PartialFC` logits, with `y_true` remapped into the sampled set.

    Full-width logits (inference, validation, `sample_rate=1`) use `y_true`
    as is, so this equals `SparseCategoricalCrossentropy(from_logits=True)`
    there. The layer is not part of the config: a deserialised loss must be
    given it again (`loss.partial_fc = layer`).

    Args:
        partial_fc: the `PartialFC` layer whose logits this loss receives.
        name, reduction, dtype: as for `keras.losses.Loss`.

    Example:
        >>> model.compile(optimizer="sgd", loss=PartialFCLoss(model.head))
    """

    def __init__(self, partial_fc=None, name="partial_fc_crossentropy", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if partial_fc is not None and not isinstance(partial_fc, PartialFC):
            raise ValueError(f"`partial_fc` must be a PartialFC layer. Received: {type(partial_fc).__name__}")
        self.partial_fc = partial_fc

    def call(self, y_true, y_pred):
        if self.partial_fc is None:
            raise ValueError("PartialFCLoss needs its PartialFC layer: PartialFCLoss(partial_fc=layer).")
        labels = self.partial_fc.loss_labels(y_true, y_pred)
        return ops.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
