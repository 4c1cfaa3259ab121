"""The head protocol: what every margin head offers to the model, Partial FC, class sharding and `fit`.

A head is a Keras layer that owns C class centres and maps

* `[embeddings, labels]` (training; `[embeddings, labels, extra]` for a head that takes a
  third input) to scaled logits (B, C), and
* `embeddings` (inference) to logits without any margin.

Every head derives from `FaceHead` and answers through these hooks only; no other module
looks at a head's concrete class:

* **logits on sampled classes** (`sampled_logits`): `PartialFC` gathers the K sampled rows
  of the class centres and asks the head for the (B, K) logits, with the labels both as
  column indices of the sample (`columns`) and as true class ids (`class_ids`, for
  class-indexed state such as KappaFace's psi or LDAM's margins). Cosine heads implement it
  once (`CosineDense`); a head whose cosines-to-logits step is more than a target-logit change
  overrides `partial_fc_logits` (or `sampled_logits`) in the same class where it overrides
  `logits_from_cosine` / `call` (`check_partial_fc_support` enforces that).
* **state** (`observe_batch`): a training batch, with true class ids, recorded into the
  head's non-trainable state before the logits (KappaFace's feature sums and memory buffer).
  Called by the head's own `call` and by `PartialFC`, only where
  `_state.state_updates_enabled()`.
* **who owns the centres** (`centre_layer()`): the layer whose `kernel` holds the class centres
  and whose variables hold the per-class state (`self`; a wrapper's wrapped head).
* **class sharding** (`variable_axes`): which variables have a class axis (or a training-sample
  axis) for `keras_facemargin.training.distribution`.
* **callbacks** (`required_callbacks`): names of the `keras_facemargin.callbacks` the head
  needs during `fit` (`head_callbacks(model)` collects them).
* **third input** (`extra_input`): what the third input is, or None.

A new head is one module (a `FaceHead` subclass, usually a `CosineDense` one overriding
`target_logit`) plus one `register_head` line in :mod:`keras_facemargin.layers.zoo`.

Example:
    >>> class HalfMargin(CosineDense):          # one file ...
    ...     def target_logit(self, cos_y, labels):
    ...         return cos_y - 0.2
    >>> register_head("half", HalfMargin)       # ... one registry line
    >>> PartialFC(build_head("half", 1000), sample_rate=0.1)   # Partial FC works unchanged
"""

import keras
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers.normalized_matmul import normalized_matmul

#: Axis roles of `FaceHead.variable_axes`: the class axis and the training-sample axis.
CLASSES = "classes"
SAMPLES = "samples"


def split_inputs(inputs):
    """`(embeddings, labels, extra)` from `embeddings`, `[embeddings]`, `[embeddings, labels]`
    or `[embeddings, labels, extra]` (missing parts are None)."""
    if isinstance(inputs, (list, tuple)):
        if not 1 <= len(inputs) <= 3:
            raise ValueError(
                "Expected `inputs` to be embeddings or [embeddings, labels(, extra)]; "
                f"got a sequence of length {len(inputs)}."
            )
        embeddings = inputs[0]
        labels = inputs[1] if len(inputs) > 1 else None
        extra = inputs[2] if len(inputs) > 2 else None
        return embeddings, labels, extra
    return inputs, None, None


def embedding_shape(input_shape):
    """The embeddings' shape from a head's `input_shape` (one shape or a list of shapes)."""
    if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
        return tuple(input_shape[0])
    return tuple(input_shape)


def prepare_indices(values, upper, name):
    """Flatten class ids / sample indices to int (B,) and check they are in [0, upper)."""
    values = ops.reshape(values, (-1,))
    if not keras.backend.standardize_dtype(values.dtype).startswith("int"):
        values = ops.cast(values, "int32")
    return _state.check_labels_in_range(values, upper, name=name)


# -- the class-centre kernel ---------------------------------------------------------------------
def build_class_kernel(layer, input_shape):
    """Check the embedding shape and add the (d, C) class kernel to `layer`.

    Shared by every head: sets `layer.embedding_dim` and `layer.kernel` from
    `layer.num_classes`, `layer.kernel_initializer`, `layer.kernel_regularizer`.
    With `layer.class_major_kernel` set (by `PartialFC`) the kernel is stored
    transposed, (C, d), initialised as the transpose of the (d, C) draw;
    `class_centres(layer)` gives the (d, C) view either way.
    """
    shape = embedding_shape(input_shape)
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "`embeddings` must have rank 2, (batch, embedding_dim), with a known last "
            f"dimension. Received shape: {shape}"
        )
    layer.embedding_dim = int(shape[-1])
    kernel_shape, initializer = (layer.embedding_dim, layer.num_classes), layer.kernel_initializer
    if getattr(layer, "class_major_kernel", False):
        kernel_shape, initializer = kernel_shape[::-1], _transposed_initializer(initializer)
    layer.kernel = layer.add_weight(
        name="kernel",
        shape=kernel_shape,
        initializer=initializer,
        regularizer=layer.kernel_regularizer,
        trainable=True,
    )


def _transposed_initializer(initializer):
    def init(shape, dtype=None):
        return ops.transpose(initializer(tuple(shape)[::-1], dtype=dtype))

    return init


def class_centres(layer):
    """The (d, C) class-centre matrix of `layer`: its kernel, transposed if stored class-major."""
    if getattr(layer, "class_major_kernel", False):
        return ops.transpose(layer.kernel)
    return layer.kernel


def sampled_cosine(embeddings, centres, dtype):
    """cos(theta) between the embeddings (B, d) and sampled class centres stored as rows (K, d), (B, K).

    Both are L2-normalised (in `dtype`; the centres inside `normalized_matmul`) and the product is
    clipped to [-1, 1].
    """
    x = ops.normalize(ops.cast(embeddings, dtype), axis=-1, epsilon=1e-12)
    return ops.clip(normalized_matmul(x, ops.cast(centres, dtype), class_axis=0), -1.0, 1.0)


def _defining_class(cls, names):
    """The most derived class of `cls.__mro__` that defines one of `names` (None if none does)."""
    for klass in cls.__mro__:
        if any(name in vars(klass) for name in names):
            return klass
    return None


class FaceHead(keras.layers.Layer):
    """Base class of every margin head: the protocol (see the module docstring).

    Subclasses set `num_classes` and implement `call` and `sampled_logits`; the other
    hooks have working defaults.

    Example:
        >>> isinstance(ArcMarginDense(10), FaceHead)
        True
    """

    #: Methods that decide how a head turns its inputs into training logits ...
    LOGIT_METHODS = ("call", "logits", "logits_from_cosine")
    #: ... and the Partial FC hooks that must be (re)defined together with them.
    PARTIAL_FC_HOOKS = ("sampled_logits", "partial_fc_logits")
    #: Names of the `keras_facemargin.callbacks` this head needs during `fit`.
    required_callbacks = ()

    _split_inputs = staticmethod(split_inputs)
    _embedding_shape = staticmethod(embedding_shape)

    # -- who owns what -------------------------------------------------------------
    def centre_layer(self):
        """The layer whose `kernel` holds the class centres and whose variables hold the per-class state.

        A method, not a property: Keras' saving walks a layer's attributes, and a second
        attribute path to a layer would move its variables in the `.keras` file.
        """
        return self

    @property
    def extra_input(self):
        """What the third input `[embeddings, labels, extra]` is (e.g. "sample_index"), or None if none."""
        return None

    def variable_axes(self):
        """`{variable name: axis roles}` for class sharding: one role per axis, `CLASSES`, `SAMPLES` or None.

        The default is the class-centre kernel: (d, C), or (C, d) when stored class-major. A
        `SAMPLES` axis has `self.num_samples` rows.
        """
        if getattr(self.centre_layer(), "class_major_kernel", False):
            return {"kernel": (CLASSES, None)}
        return {"kernel": (None, CLASSES)}

    # -- state -----------------------------------------------------------------------
    def observe_batch(self, embeddings, labels, extra):
        """Record a training batch (true class ids `labels`) into the head's state; a no-op here.

        Called for training batches with labels, only where `_state.state_updates_enabled()`
        (not while Keras traces shapes), before the logits. KappaMarginDense accumulates its
        per-class feature sums here.
        """

    # -- Partial FC --------------------------------------------------------------------
    def sampled_logits(self, embeddings, centres, classes, columns, class_ids, training=None, cos=None):
        """Training logits (B, K) over K sampled classes; the Partial FC hook.

        Args:
            embeddings: the batch's embeddings (B, d), as the head receives them.
            centres: the sampled rows of the class centres (K, d), in the centre layer's
                compute dtype (gathered from its class-major kernel).
            classes: the sorted sampled class ids (K,).
            columns: the labels as column indices of the sample, (B,).
            class_ids: the labels as true class ids, (B,).
            training: the training flag.
            cos: precomputed cosines (B, K) (a wrapper that changes how they are computed,
                e.g. `SubFaceDense`), or None to compute them from `embeddings` and `centres`.
        """
        raise NotImplementedError(self._partial_fc_message())

    def check_partial_fc_support(self):
        """Raise `NotImplementedError` unless `sampled_logits` follows this class's own logits.

        A class that (re)defines one of `LOGIT_METHODS` must also (re)define one of
        `PARTIAL_FC_HOOKS`, or an inherited Partial FC hook would compute other logits
        than the head's.
        """
        cls = type(self)
        logits_class = _defining_class(cls, self.LOGIT_METHODS)
        hook_class = _defining_class(cls, self.PARTIAL_FC_HOOKS)
        if hook_class is None or hook_class is FaceHead or not issubclass(hook_class, logits_class):
            raise NotImplementedError(self._partial_fc_message())

    def _partial_fc_message(self):
        return (
            f"PartialFC does not know how {type(self).__name__} uses its labels (it overrides `call` or "
            "`logits_from_cosine`). Give it a `partial_fc_logits(cos, columns, class_ids, embeddings, training)` "
            "method: `cos` is (B, K) over the sampled classes, `columns` the remapped labels, `class_ids` the "
            "true ones (or override `sampled_logits`)."
        )

    def compute_output_shape(self, input_shape):
        return (embedding_shape(input_shape)[0], self.num_classes)
