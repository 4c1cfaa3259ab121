"""ROC curve images (PNG): matplotlib when installed, else an OpenCV drawing.

matplotlib is optional (``matplotlib>=3.5``); without it :func:`plot_roc` draws the same
axes (log-scaled FPR, linear TPR, grid, legend) with ``cv2`` so the tools work with the
base requirements.

Example::

    plot_roc({"r50": (fpr, tpr)}, "ijbc_roc.png", title="ROC on IJB-C")
"""

from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["plot_roc"]

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_roc(curves: dict, path, title="ROC", xlim=(1e-6, 1.0), ylim=(0.0, 1.0), log_x=True,
             backend="auto", size=(800, 600)):
    """Write ROC curves to a PNG.

    Args:
        curves: ``{label: (fpr, tpr)}`` arrays (e.g. ``VerificationResult.roc_fpr/roc_tpr`` or
            :func:`~keras_facemargin.evaluation.ijb.tar_far_table` ``fpr``/``tpr``).
        path: output ``.png``.
        title: figure title.
        xlim, ylim: axis ranges (FPR, TPR).
        log_x: logarithmic FPR axis (points with FPR <= 0 are clipped to ``xlim[0]``).
        backend: ``"auto"`` (matplotlib if installed), ``"matplotlib"`` or ``"cv2"``.
        size: ``(width, height)`` in pixels.

    Returns:
        the backend used (``"matplotlib"`` or ``"cv2"``).
    """
    if not curves:
        raise ValueError("`curves` is empty.")
    if backend == "auto":
        backend = "matplotlib" if _have_matplotlib() else "cv2"
    if backend not in ("matplotlib", "cv2"):
        raise ValueError(f"`backend` must be 'auto', 'matplotlib' or 'cv2', got {backend!r}.")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    if backend == "matplotlib":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
        for label, (fpr, tpr) in curves.items():
            plt.plot(np.clip(fpr, xlim[0], None) if log_x else fpr, tpr, lw=1, label=str(label))
        if log_x:
            plt.xscale("log")
        plt.xlim(xlim)
        plt.ylim(ylim)
        plt.grid(linestyle="--", linewidth=1)
        plt.xlabel("False Positive Rate")
        plt.ylabel("True Positive Rate")
        plt.title(title)
        plt.legend(loc="lower right")
        fig.savefig(os.fspath(path))
        plt.close(fig)
        return "matplotlib"

    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 80, 20, 40, 60
    pw, ph = w - left - right, h - top - bottom

    def fx(x):
        x = np.asarray(x, np.float64)
        if log_x:
            lo, hi = np.log10(xlim[0]), np.log10(xlim[1])
            x = np.log10(np.clip(x, xlim[0], xlim[1]))
        else:
            lo, hi = xlim
            x = np.clip(x, lo, hi)
        return left + (x - lo) / (hi - lo) * pw

    def fy(y):
        y = np.clip(np.asarray(y, np.float64), ylim[0], ylim[1])
        return top + ph - (y - ylim[0]) / (ylim[1] - ylim[0]) * ph

    font = cv2.FONT_HERSHEY_SIMPLEX
    xt = [10.0 ** e for e in range(int(np.ceil(np.log10(xlim[0]))), int(np.floor(np.log10(xlim[1]))) + 1)] \
        if log_x else list(np.linspace(xlim[0], xlim[1], 6))
    for x in xt:
        px = int(round(float(fx(x))))
        cv2.line(img, (px, top), (px, top + ph), (210, 210, 210), 1)
        cv2.putText(img, f"{x:g}", (px - 18, top + ph + 20), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for y in np.linspace(ylim[0], ylim[1], 6):
        py = int(round(float(fy(y))))
        cv2.line(img, (left, py), (left + pw, py), (210, 210, 210), 1)
        cv2.putText(img, f"{y:.2f}", (left - 45, py + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, title, (left, top - 12), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "False Positive Rate", (left + pw // 2 - 80, h - 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "TPR", (10, top + ph // 2), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (label, (fpr, tpr)) in enumerate(curves.items()):
        r, g, b = _COLORS[i % len(_COLORS)]
        pts = np.stack([fx(fpr), fy(tpr)], axis=1)
        pts = np.round(pts).astype(np.int32)
        keep = np.ones(len(pts), bool)
        keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)  # drop duplicate pixels (millions of ROC points)
        cv2.polylines(img, [pts[keep].reshape(-1, 1, 2)], False, (b, g, r), 2, cv2.LINE_AA)
        ly = top + ph - 15 - 20 * (len(curves) - 1 - i)
        cv2.line(img, (left + pw - 200, ly - 4), (left + pw - 175, ly - 4), (b, g, r), 2)
        cv2.putText(img, str(label)[:24], (left + pw - 170, ly), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(os.fspath(path), img):
        raise ValueError(f"could not write {path}.")
    return "cv2"
