"""Angle statistics of a trained head (ArcFace paper, Deng et al. CVPR 2019, Sec. 4.2, Table 2).

For features ``x_i`` of class ``y_i``, class weights ``W_j`` (columns of the ``(d, C)`` kernel)
and embedding feature centres ``c_j`` (the normalised mean of a class's normalised features):

* **W-EC**: mean over classes of the angle between ``W_j`` and ``c_j``;
* **W-Inter**: mean over classes of the minimum angle between ``W_j`` and any other ``W_k``;
* **Intra**: mean over samples of the angle between ``x_i`` and ``c_{y_i}``;
* **Inter**: mean over classes of the minimum angle between ``c_j`` and any other ``c_k``.

A discriminative head has small W-EC and Intra and large W-Inter and Inter.

Example::

    stats = angle_statistics(embeddings, labels, kernel)   # {"W-EC": 12.3, ...} in degrees
"""

from __future__ import annotations

import numpy as np

__all__ = ["angle_statistics"]


def _unit(a, axis):
    n = np.linalg.norm(a, axis=axis, keepdims=True)
    return a / np.maximum(n, 1e-12)


def _deg(cos):
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _min_other_angle(unit_rows, block=4096):
    """Per row, the minimum angle (degrees) to any other row (blocked to bound memory)."""
    n = unit_rows.shape[0]
    best = np.full(n, -1.0)
    for s in range(0, n, block):
        sim = unit_rows[s:s + block] @ unit_rows.T
        sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -1.0
        best[s:s + block] = sim.max(axis=1)
    return _deg(best)


def angle_statistics(embeddings, labels, kernel=None) -> dict:
    """W-EC, W-Inter, Intra and Inter in degrees (W-* only with a ``kernel``).

    Args:
        embeddings: ``(N, d)`` features (normalised here).
        labels: ``(N,)`` class ids in ``[0, C)``; every class in ``kernel`` should occur.
        kernel: optional ``(d, C)`` class-weight matrix of the head.

    Returns:
        dict of floats (degrees), plus ``classes`` (classes with features).

    Raises:
        ValueError: shapes that do not fit together.
    """
    x = _unit(np.asarray(embeddings, np.float64), 1)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"`embeddings` (N, d) and `labels` (N,) must match, got {x.shape} and {y.shape}.")
    num_classes = int(y.max()) + 1
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, y, x)
    present = np.bincount(y, minlength=num_classes) > 0
    centres = _unit(sums, 1)
    out = {"classes": int(present.sum()),
           "Intra": float(_deg(np.sum(x * centres[y], axis=1)).mean())}
    out["Inter"] = float(_min_other_angle(centres[present]).mean()) if present.sum() > 1 else float("nan")
    if kernel is not None:
        w = np.asarray(kernel, np.float64)
        if w.ndim != 2 or w.shape[0] != x.shape[1] or w.shape[1] < num_classes:
            raise ValueError(f"`kernel` must be (d={x.shape[1]}, C>={num_classes}), got {w.shape}.")
        w = _unit(w.T, 1)
        out["W-EC"] = float(_deg(np.sum(w[:num_classes][present] * centres[present], axis=1)).mean())
        out["W-Inter"] = float(_min_other_angle(w).mean())
    return out
