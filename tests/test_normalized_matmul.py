"""`normalized_matmul` (the cosine heads' matmul with a hand-written gradient) against NumPy.

References: the value `x @ (W / ||W||)` and its gradient written as the tangent projection
`(I - w w^T / |w|^2) x^T g / |w|` (a different form from the code's radial coefficient), and
central finite differences of the NumPy function in float64. Cross-backend agreement of every
head built on it (JAX, torch) is in tests/test_backends.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin.layers.normalized_matmul import normalized_matmul


def _numpy_value(x, w):  # w (d, C)
    return x @ (w / np.maximum(np.linalg.norm(w, axis=0), 1e-12))


def _numpy_grads(x, w, g):
    """Gradients of sum(g * x @ normalize(W)) as tangent projections, float64."""
    norms = np.linalg.norm(w, axis=0)
    u = w / norms
    dx = g @ u.T
    a = x.T @ g  # (d, C): gradient w.r.t. the unit centres
    dw = (a - u * np.sum(u * a, axis=0)) / norms
    return dx, dw


def _tf_grads(x, w, g, class_axis):
    x, w, g = (tf.constant(v, tf.float32) for v in (x, w, g))
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        out = normalized_matmul(x, w, class_axis=class_axis)
        loss = tf.reduce_sum(out * g)
    dx, dw = tape.gradient(loss, [x, w])
    return out.numpy(), dx.numpy(), dw.numpy()


@pytest.mark.parametrize("class_axis", [1, 0])
def test_value_and_gradients_equal_the_projection_formula(class_axis):
    rng = np.random.default_rng(0)
    b, d, c = 5, 7, 11
    x = rng.standard_normal((b, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.standard_normal((d, c)) * rng.uniform(0.2, 3.0, c)  # centres of different lengths
    g = rng.standard_normal((b, c))
    out, dx, dw = _tf_grads(x, w if class_axis == 1 else w.T, g, class_axis)
    ref_dx, ref_dw = _numpy_grads(x, w, g)
    np.testing.assert_allclose(out, _numpy_value(x, w), atol=1e-6)
    np.testing.assert_allclose(dx, ref_dx, atol=1e-5)
    np.testing.assert_allclose(dw if class_axis == 1 else dw.T, ref_dw, atol=1e-5)


def test_gradients_equal_finite_differences():
    rng = np.random.default_rng(1)
    b, d, c = 3, 4, 5
    x = rng.standard_normal((b, d))  # not unit: the function is x @ normalize(W) for any x
    w = rng.standard_normal((d, c))
    g = rng.standard_normal((b, c))
    _, dx, dw = _tf_grads(x, w, g, 1)

    def loss(xv, wv):
        return float(np.sum(g * _numpy_value(xv, wv)))

    h = 1e-6
    for arr, grad in ((x, dx), (w, dw)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += h
            minus[idx] -= h
            args = (plus, w) if arr is x else (x, plus)
            args_m = (minus, w) if arr is x else (x, minus)
            num[idx] = (loss(*args) - loss(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad, num, atol=2e-4)


def test_a_centre_shorter_than_epsilon_has_the_constant_scale_and_no_radial_term():
    # ops.normalize scales a vector shorter than epsilon by 1/epsilon (no derivative of the
    # scale there): the gradient is x^T g / epsilon, with no projection.
    x = np.array([[0.6, 0.8]])
    w = np.array([[1.0, 0.0], [0.0, 0.0]])  # second centre is zero
    g = np.array([[1.0, 2.0]])
    out, _, dw = _tf_grads(x, w, g, 1)
    np.testing.assert_allclose(out, [[0.6, 0.0]], atol=1e-7)
    np.testing.assert_allclose(dw[:, 1], x[0] * 2.0 / 1e-12, rtol=1e-6)
    assert np.all(np.isfinite(dw))


def test_rejects_an_unknown_class_axis():
    with pytest.raises(ValueError, match="class_axis"):
        normalized_matmul(np.zeros((1, 2), "float32"), np.zeros((2, 3), "float32"), class_axis=2)
