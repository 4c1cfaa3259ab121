"""SubFace: softmax approximation on random feature subspaces (Xu, Xiang & Qian, arXiv:2208.11483)."""

import keras
from keras import ops

from keras_facemargin.layers.base import FaceHead, class_centres, sampled_cosine, split_inputs
from keras_facemargin.layers.cosine_dense import CosineDense
from keras_facemargin.layers.registry import build_head


@keras.saving.register_keras_serializable(package="keras_facemargin")
class SubFaceDense(FaceHead):
    """SubFace wrapper: train any cosine head on a random subspace of the features.

    At every training step the d feature dimensions are randomly split into
    `num_subspaces` non-overlapping subspaces of `d // num_subspaces`
    dimensions and one of them is used: the cosines are computed between the
    sub-vectors of the embedding and of the class centres, each L2-normalised
    on its own, and the wrapped head turns them into logits with its usual
    margin (ArcFace by default, the paper's best combination). At inference,
    or without labels, the full feature is used.

    Source caveat: this follows the paper's abstract ("we dynamically select
    the non-overlapping subspace features in each batch during training, and
    then use the subspace features to approximate full-feature among
    softmax-based loss"); its full text and code were not available to check
    the selection rule and the default subspace size, so `num_subspaces=2`
    (half the dimensions) is this library's choice.

    Any `CosineDense` head works except those that take a third input
    (`KappaMarginDense`). The wrapped head owns the class-centre kernel and any state.

    Args:
        num_classes: number of identities (must match `head` when a layer is given).
        head: the wrapped head: a registry name (built with `head_kwargs`),
            a `CosineDense` layer, or its serialised config.
        num_subspaces: the number of non-overlapping subspaces (>= 1; 1 = the plain head).
        seed: seed of the subspace sampling.
        head_kwargs: arguments for the head when `head` is a name.
        **kwargs: layer arguments.

    Example:
        >>> head = SubFaceDense(85742, head="arcface", num_subspaces=2)
        >>> logits = head([embeddings, labels], training=True)
    """

    def __init__(self, num_classes, head="arcface", num_subspaces=2, seed=None, head_kwargs=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(head, str):
            head = build_head(head, num_classes, **dict(head_kwargs or {}))
        elif isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        if not isinstance(head, CosineDense) or head.extra_input is not None:
            raise ValueError(
                "`head` must be a CosineDense margin head other than KappaMarginDense (or its registry "
                f"name). Received: {type(head).__name__}"
            )
        if head.num_classes != num_classes:
            raise ValueError(
                f"`num_classes`={num_classes} does not match the head's num_classes={head.num_classes}."
            )
        if not isinstance(num_subspaces, int) or isinstance(num_subspaces, bool) or num_subspaces < 1:
            raise ValueError(f"`num_subspaces` must be an integer >= 1. Received: num_subspaces={num_subspaces!r}")
        self.num_classes = num_classes
        self.head = head
        self.num_subspaces = num_subspaces
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if not self.head.built:
            self.head.build(input_shape)
        self.embedding_dim = self.head.embedding_dim
        if self.embedding_dim < self.num_subspaces:
            raise ValueError(
                f"`num_subspaces`={self.num_subspaces} exceeds the embedding dimension {self.embedding_dim}."
            )

    @property
    def subspace_dim(self):
        return self.embedding_dim // self.num_subspaces

    def sample_subspace(self):
        """Indices of one random subspace: a block of a random partition of the dimensions."""
        perm = keras.random.shuffle(ops.arange(self.embedding_dim, dtype="int32"), seed=self.seed_generator)
        return perm[: self.subspace_dim]

    def logits_for_subspace(self, embeddings, labels, indices, training=None):
        """The head's logits with cosines computed on the feature dimensions `indices`."""
        head = self.head
        labels = head._prepare_labels(labels, None)
        x = ops.take(ops.cast(embeddings, head.compute_dtype), indices, axis=1)
        w = ops.take(ops.cast(class_centres(head), head.compute_dtype), indices, axis=0)
        x = ops.normalize(x, axis=-1, epsilon=1e-12)
        w = ops.normalize(w, axis=0, epsilon=1e-12)
        cos = ops.clip(ops.matmul(x, w), -1.0, 1.0)
        return head.logits_from_cosine(cos, labels, embeddings, training)

    def call(self, inputs, training=None):
        embeddings, labels, _ = split_inputs(inputs)
        if labels is None or not training or self.num_subspaces == 1:
            return self.head(inputs, training=training)
        return self.logits_for_subspace(embeddings, labels, self.sample_subspace(), training=training)

    # -- the head protocol (keras_facemargin.layers.base) ----------------------------
    def centre_layer(self):
        """The wrapped head: it owns the class centres and any state."""
        return self.head

    @property
    def required_callbacks(self):
        return self.head.required_callbacks

    def variable_axes(self):
        return self.head.variable_axes()

    def check_partial_fc_support(self):
        super().check_partial_fc_support()
        self.head.check_partial_fc_support()

    def sampled_logits(self, embeddings, centres, classes, columns, class_ids, training=None, cos=None):
        """Partial FC: the wrapped head's sampled logits, with cosines on one random subspace."""
        head = self.head
        if cos is None and self.num_subspaces > 1:
            dims = self.sample_subspace()
            x = ops.cast(embeddings, head.compute_dtype)
            cos = sampled_cosine(ops.take(x, dims, axis=1), ops.take(centres, dims, axis=1), head.compute_dtype)
        return head.sampled_logits(embeddings, centres, classes, columns, class_ids, training, cos=cos)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "head": keras.saving.serialize_keras_object(self.head),
                "num_subspaces": self.num_subspaces,
                "seed": self.seed,
            }
        )
        return config
