"""`x @ normalize(W)`, the cosine matmul of every margin head, with a hand-written gradient.

With `r_j = 1 / max(||w_j||, eps)` (`ops.normalize`'s scale) and unit embeddings `x`, the
cosine to class j is `z_bj * r_j` with `z = x @ W` (NormFace, Wang et al. 2017, eq. 1). For an
upstream gradient `g` (B, C), `gr = g * r`:

    dL/dx   = gr @ W^T
    dL/dw_j = x^T gr_j - r_j^2 (sum_b gr_bj z_bj) w_j        (0 where ||w_j|| < eps)

which is `(I - w_j w_j^T / ||w_j||^2) x^T g_j / ||w_j||`, the gradient through `normalize`
(Liu et al., SphereFace, 2017, sec. 3; Wang et al., NormFace, 2017, eq. 5).

Why by hand: autodiff of `(x @ W) * rsqrt(sum(W^2))` builds the radial term from a broadcast
of the (C,) gradient, `2 * W` and a product, each a new C x d tensor, and the forward pass
squares W into another. At 85,742 classes x 512 each is 175 MB; on the CPU each fresh buffer
of that size is page-faulted in, which made the cosine head cost 1.7x a `Dense` head's train
step. Here the forward pass reads W twice (the matmul and, on TensorFlow, the fused
`EuclideanNorm` reduction) and the backward pass writes two C x d tensors (the matmul's
`x^T gr` and `w * c`, whose sum reuses a buffer): as cheap as the maths allows without a fused
kernel. The function is the same; `tests/test_normalized_matmul.py` checks values and
gradients against NumPy and finite differences.
"""

import keras
from keras import ops

EPSILON = 1e-12


def column_norms(w, axis):
    """`||w||` along `axis` (no keepdims), in one read of `w`.

    TensorFlow: `tf.math.reduce_euclidean_norm` (one reduction kernel; `ops.norm` squares
    `w` into a new tensor first). JAX fuses `ops.norm`; torch's is one kernel.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.math.reduce_euclidean_norm(w, axis=axis)
    return ops.norm(w, axis=axis)


def normalized_matmul(x, w, class_axis=1, epsilon=EPSILON):
    """`x @ normalize(W)`: (B, d) embeddings times unit class centres, (B, C).

    Args:
        x: embeddings (B, d), usually already L2-normalised (then the result is cos(theta)).
        w: class centres, (d, C) with `class_axis=1` (a head's kernel) or (C, d) with
            `class_axis=0` (class-major kernels and Partial FC's gathered rows).
        class_axis: which axis of `w` indexes classes.
        epsilon: centres shorter than this are scaled by `1 / epsilon`, as `ops.normalize`.

    Returns:
        (B, C) products, unclipped.

    Example:
        >>> cos = normalized_matmul(ops.normalize(x, axis=-1), head.kernel)   # (B, C)
    """
    if class_axis not in (0, 1):
        raise ValueError(f"`class_axis` must be 0 or 1. Received: class_axis={class_axis!r}")
    major = class_axis == 0  # w is (C, d)

    @ops.custom_gradient
    def forward(x, w):
        z = ops.matmul(x, ops.transpose(w) if major else w)
        norms = column_norms(w, 1 if major else 0)
        r = 1.0 / ops.maximum(norms, epsilon)

        def grad(*args, upstream=None):
            g = args[0] if upstream is None else upstream
            gr = g * r
            # -r^2 * sum_b gr_bj z_bj per class; 0 where the norm is clamped (constant scale).
            c = ops.where(norms > epsilon, -ops.square(r), 0.0) * ops.sum(gr * z, axis=0)
            if major:
                return ops.matmul(gr, w), ops.matmul(ops.transpose(gr), x) + w * ops.expand_dims(c, -1)
            return ops.matmul(gr, ops.transpose(w)), ops.matmul(ops.transpose(x), gr) + w * c

        return z * r, grad

    return forward(x, w)
