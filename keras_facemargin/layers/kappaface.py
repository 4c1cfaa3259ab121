"""KappaFace: adaptive additive angular margin (Oinar, Le & Woo, IEEE Access 2023)."""

import keras
import numpy as np
from keras import ops

from keras_facemargin.layers import _state, kappa_math
from keras_facemargin.layers.base import CLASSES, SAMPLES, prepare_indices
from keras_facemargin.layers.cosine_dense import (
    CosineDense,
    _check_class_counts,
    _is_real,
    _check_nonnegative,
    _check_positive,
    arc_target,
)

ESTIMATORS = ("memory_buffer", "momentum_encoder")
TARGETS = ("arc", "cos", "exp")


def _check_fraction(name, value, closed_right=False):
    ok = _is_real(value) and 0.0 <= value and (value <= 1.0 if closed_right else value < 1.0)
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"`{name}` must be a number in {interval}. Received: {name}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_facemargin")
class KappaMarginDense(CosineDense):
    """KappaFace head: class c gets the margin `psi_c * m0` (eq. 14).

    `psi_c = gamma * w_kappa_c + (1 - gamma) * w_pop_c` mixes a concentration
    weight, from a von Mises-Fisher concentration estimate of the class's
    features (eq. 3-11), and a population weight from its number of images
    (eq. 12). See `keras_facemargin.layers.kappa_math` for the formulas. The
    target logit is `s*cos(theta_y + psi_y*m0)` with ArcFace's monotone fallback
    (`target="arc"`), `s*(cos(theta_y) - psi_y*m0)` (`target="cos"`), or
    ExpFace's `s*cos(pi*(theta_y/pi)^(1 - psi_y*m0))` (`target="exp"`, m0 < 1;
    m0=0.3 gives ExpFace's m_e=0.7 at psi=1).

    During training the layer accumulates, per class, the sum of unit-norm
    features and their count; `KappaUpdater` turns them into `kappa` and `psi`
    at each epoch end and resets them. `psi` starts at 1, so epoch 0 trains with
    the fixed margin m0, as the official code does. Two feature estimators:

    - `"memory_buffer"` (eq. 5): one feature per training sample, updated as
      `z_i <- normalize(alpha * z_i + (1 - alpha) * f_i)`; the sums use the
      updated `z_i`. Call the layer with `[embeddings, labels, sample_index]`.
      The buffer holds |D| x d values: for MS1MV2 (5.8M images, d=512) that is
      6.0 GB in float16 (`buffer_dtype="float16"`) or 12 GB in float32. A
      never-visited row is zero and takes `f_i` directly (the official code
      starts from random rows). The official code weights the new feature
      by 0.9, i.e. `buffer_alpha=0.1` here; the paper's alpha=0.3 is the
      default.
    - `"momentum_encoder"` (eq. 7): features of an EMA copy of the backbone
      (momentum 0.999; the official code uses 0.9). `FaceRecognizer` owns the
      encoder and calls the layer with `[embeddings, labels, encoder_embeddings]`.

    Under `tf.distribute` the accumulators are `on_read`/`sum` variables (each
    replica adds its own samples; reads sum over replicas) and the memory buffer
    is updated with the features of all replicas (all-gather), so every replica
    holds the same buffer.

    Args:
        num_classes: number of identities C.
        class_counts: length-C sequence of training images per class (all > 0).
        scale: s (paper: 64).
        margin: base margin m0 (paper: 0.8).
        temperature: T of the concentration weight (paper: 0.4).
        gamma: mixing weight between concentration and population (paper: 0.7).
        estimator: `"memory_buffer"` or `"momentum_encoder"`.
        num_samples: training-set size |D|; required by the memory buffer.
        buffer_alpha: memory-buffer EMA weight of the old feature (paper: 0.3).
        buffer_dtype: `"float32"` or `"float16"` storage of the buffer.
        encoder_momentum: momentum of the EMA encoder (paper: 0.999).
        max_count_factor: K = factor * max(n_c) in eq. 12 (official code: 1.05).
        target: `"arc"` (additive angular, the paper), `"cos"` (additive cosine) or
            `"exp"` (ExpFace exponent 1 - psi*m0).
        **kwargs: see `CosineDense`.

    Example:
        >>> head = KappaMarginDense(num_classes=3, class_counts=[10, 4, 1], num_samples=15)
        >>> logits = head([embeddings, labels, sample_index], training=True)
    """

    def __init__(
        self,
        num_classes,
        class_counts,
        scale=64.0,
        margin=0.8,
        temperature=0.4,
        gamma=0.7,
        estimator="memory_buffer",
        num_samples=None,
        buffer_alpha=0.3,
        buffer_dtype="float32",
        encoder_momentum=0.999,
        max_count_factor=1.05,
        target="arc",
        **kwargs,
    ):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.class_counts = _check_class_counts(class_counts, num_classes)
        self.margin = _check_nonnegative("margin", margin)
        self.temperature = _check_positive("temperature", temperature)
        self.gamma = _check_fraction("gamma", gamma, closed_right=True)
        if estimator not in ESTIMATORS:
            raise ValueError(f"`estimator` must be one of {ESTIMATORS}. Received: estimator={estimator!r}")
        self.estimator = estimator
        if estimator == "memory_buffer":
            if not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
                raise ValueError(
                    "`num_samples` (the training-set size |D|) must be a positive integer when "
                    f"estimator='memory_buffer'. Received: num_samples={num_samples!r}"
                )
            num_samples = int(num_samples)
        self.num_samples = num_samples
        self.buffer_alpha = _check_fraction("buffer_alpha", buffer_alpha)
        if buffer_dtype not in ("float32", "float16"):
            raise ValueError(f"`buffer_dtype` must be 'float32' or 'float16'. Received: {buffer_dtype!r}")
        self.buffer_dtype = buffer_dtype
        self.encoder_momentum = _check_fraction("encoder_momentum", encoder_momentum)
        if not _is_real(max_count_factor) or max_count_factor < 1.0:
            raise ValueError(f"`max_count_factor` must be >= 1. Received: {max_count_factor!r}")
        self.max_count_factor = float(max_count_factor)
        if target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}. Received: target={target!r}")
        if target == "exp" and self.margin >= 1.0:
            raise ValueError(
                f"`margin` must be < 1 with target='exp' (the exponent is 1 - psi*margin). Received: margin={margin!r}"
            )
        self.target = target

    def build(self, input_shape):
        super().build(input_shape)
        c, d = self.num_classes, self.embedding_dim
        counts = self.class_counts.astype("float32")
        self.class_count_weights = self.add_weight(
            name="class_counts",
            shape=(c,),
            initializer=lambda shape, dtype=None: ops.convert_to_tensor(counts, dtype or "float32"),
            trainable=False,
        )
        self.kappa = self.add_weight(name="kappa", shape=(c,), initializer="zeros", trainable=False)
        self.psi = self.add_weight(name="psi", shape=(c,), initializer="ones", trainable=False)
        # Keras' add_weight has no `synchronization` argument: create the
        # cross-replica accumulators directly (they are tracked as attributes).
        self.feature_sums = keras.Variable(
            initializer="zeros",
            shape=(c, d),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="sum",
            name="feature_sums",
        )
        self.feature_counts = keras.Variable(
            initializer="zeros",
            shape=(c,),
            dtype="float32",
            trainable=False,
            synchronization="on_read",
            aggregation="sum",
            name="feature_counts",
        )
        if self.estimator == "memory_buffer":
            self.memory = keras.Variable(
                initializer="zeros",
                shape=(self.num_samples, d),
                dtype=self.buffer_dtype,
                trainable=False,
                aggregation="only_first_replica",
                name="memory",
            )

    # -- training-time state ----------------------------------------------------
    def margins(self, labels=None):
        """Current per-class margins `psi * m0` (all classes, or those of `labels`)."""
        psi = self.psi if labels is None else ops.take(self.psi, labels, axis=0)
        return ops.convert_to_tensor(psi) * self.margin

    def target_from_cosine(self, cos_y, labels):
        """Target logits (before `scale`) from the target cosines `cos_y` of true classes `labels`.

        Eq. 14 with the class margin `psi_y * m0`: ArcFace's `cos(theta + m)` (`target="arc"`),
        CosFace's `cos(theta) - m` (`"cos"`) or ExpFace's exponent `1 - m` (`"exp"`). Shared by
        `call` and the Partial FC wrapper, which passes true class ids, never sampled indices.
        """
        margin = self.margins(labels)
        if self.target == "arc":
            return arc_target(cos_y, margin)
        if self.target == "exp":
            from keras_facemargin.layers.expface import exp_target

            return exp_target(cos_y, 1.0 - margin)
        return cos_y - margin

    def _update_state(self, embeddings, labels, extra):
        if extra is None:
            needed = "sample_index" if self.estimator == "memory_buffer" else "encoder_embeddings"
            raise ValueError(
                f"KappaMarginDense(estimator={self.estimator!r}) needs [embeddings, labels, {needed}] "
                "when training=True; the third input is missing."
            )
        _state.check_replicated_state(type(self).__name__)
        if self.estimator == "memory_buffer":
            index = prepare_indices(extra, self.num_samples, "sample_index")
            f = ops.normalize(ops.stop_gradient(ops.cast(embeddings, "float32")), axis=-1, epsilon=1e-12)
            old = ops.cast(_state.gather_rows(self.memory, index), "float32")
            features = ops.normalize(
                self.buffer_alpha * old + (1.0 - self.buffer_alpha) * f, axis=-1, epsilon=1e-12
            )
            _state.scatter_update_rows(self.memory, _state.all_gather(index), _state.all_gather(features))
        else:
            features = ops.normalize(ops.stop_gradient(ops.cast(extra, "float32")), axis=-1, epsilon=1e-12)
        _state.scatter_add_rows(self.feature_sums, labels, features)
        _state.scatter_add_rows(self.feature_counts, labels, ops.ones_like(labels, dtype="float32"))

    def update_margins(self):
        """Recompute kappa and psi from the accumulated features, then reset them.

        Called by `KappaUpdater` at each epoch end (outside the replica context,
        so reading the accumulators sums over replicas).

        Returns:
            dict of Python floats: min/mean/max of kappa and of the margins, and
            the number of classes observed this epoch.
        """
        sums = ops.convert_to_tensor(self.feature_sums.value)
        counts = ops.convert_to_tensor(self.feature_counts.value)
        kappa, psi = kappa_math.kappa_margin_weights(
            sums,
            counts,
            self.class_count_weights,
            self.embedding_dim,
            temperature=self.temperature,
            gamma=self.gamma,
            max_count_factor=self.max_count_factor,
        )
        seen = float((ops.convert_to_numpy(counts) > 0).sum())
        self.kappa.assign(kappa)
        self.psi.assign(psi)
        self.reset_accumulators()
        kappa = ops.convert_to_numpy(kappa)
        margins = ops.convert_to_numpy(psi) * self.margin
        return {
            "kappa_min": float(kappa.min()),
            "kappa_mean": float(kappa.mean()),
            "kappa_max": float(kappa.max()),
            "margin_min": float(margins.min()),
            "margin_mean": float(margins.mean()),
            "margin_max": float(margins.max()),
            "kappa_classes_seen": seen,
        }

    def reset_accumulators(self):
        """Zero the per-class feature sums and counts."""
        self.feature_sums.assign(ops.zeros(self.feature_sums.shape, "float32"))
        self.feature_counts.assign(ops.zeros(self.feature_counts.shape, "float32"))

    # -- the head protocol (keras_facemargin.layers.base) ----------------------------
    required_callbacks = ("KappaUpdater",)

    @property
    def extra_input(self):
        return "sample_index" if self.estimator == "memory_buffer" else "encoder_embeddings"

    def variable_axes(self):
        axes = super().variable_axes()
        axes.update({"class_counts": (CLASSES,), "kappa": (CLASSES,), "psi": (CLASSES,),
                     "feature_sums": (CLASSES, None), "feature_counts": (CLASSES,)})
        if self.estimator == "memory_buffer":
            axes["memory"] = (SAMPLES, None)
        return axes

    # -- forward ----------------------------------------------------------------
    # `CosineDense.call` does the rest: cosines, labels, `observe_batch` for a training
    # batch, then `logits_from_cosine` -> `target_logit` -> `apply_margin`.
    def check_extra_input(self, extra):
        """The third input (sample index or encoder embeddings) is this head's; checked in `observe_batch`."""

    def target_logit(self, cos_y, labels):
        return self.target_from_cosine(cos_y, labels)

    def observe_batch(self, embeddings, labels, extra):
        self._update_state(embeddings, labels, extra)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "class_counts": self.class_counts.tolist(),
                "margin": self.margin,
                "temperature": self.temperature,
                "gamma": self.gamma,
                "estimator": self.estimator,
                "num_samples": self.num_samples,
                "buffer_alpha": self.buffer_alpha,
                "buffer_dtype": self.buffer_dtype,
                "encoder_momentum": self.encoder_momentum,
                "max_count_factor": self.max_count_factor,
                "target": self.target,
            }
        )
        return config
