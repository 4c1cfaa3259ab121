"""SphereFace / A-Softmax: multiplicative angular margin (Liu et al., CVPR 2017)."""

import math

import keras
from keras import ops

from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative

# cos(m*theta) as a polynomial in cos(theta) (Chebyshev T_m), as in the official Caffe layer.
_CHEBYSHEV = {
    1: lambda c: c,
    2: lambda c: 2.0 * c**2 - 1.0,
    3: lambda c: 4.0 * c**3 - 3.0 * c,
    4: lambda c: 8.0 * c**4 - 8.0 * c**2 + 1.0,
}


def sphere_psi(cos, m):
    """psi(theta) = (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m] (A-Softmax eq. 7).

    Computed from cos(theta) with the Chebyshev polynomial T_m and thresholds
    cos(j pi/m) for k (no arccos, so no infinite gradient at theta = 0 or pi).
    """
    k = ops.zeros_like(cos)
    for j in range(1, m):
        k = k + ops.cast(cos <= math.cos(j * math.pi / m), cos.dtype)
    k = ops.stop_gradient(k)
    sign = 1.0 - 2.0 * ops.mod(k, 2.0)
    return sign * _CHEBYSHEV[m](cos) - 2.0 * k


def sphereface_lambda(iteration, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    """lambda = max(lambda_min, base * (1 + gamma * iteration)^(-power)) (official Caffe schedule)."""
    return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))


@keras.saving.register_keras_serializable(package="keras_facemargin")
class SphereMarginDense(CosineDense):
    """SphereFace (A-Softmax) head, Liu et al., CVPR 2017, eq. 7.

    Logits are `||x|| cos(theta_j)` (weights normalised, features not) and the
    target logit is `||x|| psi(theta_y)` with
    `psi(theta) = (-1)^k cos(m theta) - 2k` for theta in [k pi/m, (k+1) pi/m].
    Training the pure loss does not converge; the official code anneals it:
    target = `(lambda ||x|| cos(theta_y) + ||x|| psi(theta_y)) / (1 + lambda)`
    with lambda read from a non-trainable variable, which the
    `keras_facemargin.callbacks.SphereFaceAnnealing` callback sets every
    batch (base 1000, gamma 0.12, power 1, lambda_min 5 in the official
    prototxt). `lambda_init=0` is the paper's pure A-Softmax.

    `normalize_features=True` is the normalised-feature variant (not in the
    paper): the feature norm is replaced by the fixed scale s.

    Args:
        num_classes: number of identities.
        margin: integer m in {1, 2, 3, 4} (paper: 4).
        lambda_init: initial annealing lambda (0: pure A-Softmax).
        normalize_features: use `scale` instead of `||x||`.
        scale: s, used only with `normalize_features=True`.
        **kwargs: see `CosineDense`.

    Example:
        >>> head = SphereMarginDense(num_classes=10572)
        >>> model.fit(ds, callbacks=[SphereFaceAnnealing()])
    """

    def __init__(self, num_classes, margin=4, lambda_init=0.0, normalize_features=False, scale=64.0, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        if not isinstance(margin, int) or isinstance(margin, bool) or margin not in _CHEBYSHEV:
            raise ValueError(f"`margin` must be an integer in {{1, 2, 3, 4}}. Received: margin={margin!r}")
        self.margin = margin
        self.lambda_init = _check_nonnegative("lambda_init", lambda_init)
        self.normalize_features = bool(normalize_features)
        # Created here, not in build, so SphereFaceAnnealing can set it before the first batch.
        self.annealing_lambda = self.add_weight(
            name="annealing_lambda",
            shape=(),
            initializer=keras.initializers.Constant(self.lambda_init),
            trainable=False,
        )

    required_callbacks = ("SphereFaceAnnealing",)

    def _radius(self, embeddings):
        if self.normalize_features:
            return self.scale
        return ops.expand_dims(zc.safe_norm(ops.cast(embeddings, self.compute_dtype)), -1)

    def inference_logits(self, embeddings, cos):
        return self._radius(embeddings) * cos

    def logits_from_cosine(self, cos, labels, embeddings, training=None):
        cos_y = zc.target_cosine(cos, labels)
        lam = ops.convert_to_tensor(self.annealing_lambda)
        target = (lam * cos_y + sphere_psi(cos_y, self.margin)) / (1.0 + lam)
        one_hot = ops.one_hot(labels, cos.shape[-1], dtype=cos.dtype)  # C, or the Partial FC sample
        return self._radius(embeddings) * (cos + one_hot * ops.expand_dims(target - cos_y, -1))

    def partial_fc_logits(self, cos, columns, class_ids, embeddings=None, training=None):
        """Partial FC: the labels only index columns of `cos` (the one-hot is K wide),
        so the sampled columns work as is."""
        return self.logits_from_cosine(cos, columns, embeddings, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"margin": self.margin, "lambda_init": self.lambda_init, "normalize_features": self.normalize_features}
        )
        return config
