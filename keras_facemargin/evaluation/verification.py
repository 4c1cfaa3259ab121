"""Pair verification with the standard 10-fold LFW / insightface protocol.

Conventions (used by every function here):

* a pair is predicted *genuine* iff ``score > threshold`` (cosine similarity;
  insightface's ``distance < threshold`` on L2-normalised embeddings is the same rule
  up to a monotone change of variable);
* folds are contiguous blocks in pair order: with ``n`` pairs and ``F`` folds, fold
  ``k`` holds the pairs of ``np.array_split(np.arange(n), F)[k]`` -- identical to
  ``sklearn.model_selection.KFold(F, shuffle=False)`` used by insightface, and for
  LFW's 6000 pairs fold ``k`` is pairs ``600k .. 600k+599`` exactly as ``pairs.txt``
  orders them;
* threshold selection (``thresholds=None``): for each held-out fold the candidates
  are, over the *training* folds' sorted unique scores ``u_0 < ... < u_{m-1}``,
  ``nextafter(u_0, -inf)`` (accept all), the midpoints ``(u_{j-1} + u_j) / 2`` and
  ``u_{m-1}`` (reject all). Every achievable training accuracy is attained by one of
  them; the first (smallest) maximiser is used. With explicit ``thresholds`` (e.g.
  insightface's ``np.arange`` grid) the first maximiser in the given order is used.

Example::

    emb_a = embed_images(model, images_a)
    emb_b = embed_images(model, images_b)
    result = kfold_verification(pair_scores(emb_a, emb_b), is_same)
    print(format_table({"arcface": result}))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from keras_facemargin.utils.images import normalize_images
from keras_facemargin.evaluation._far import floor_threshold

__all__ = [
    "VerificationResult",
    "embed_images",
    "pair_scores",
    "kfold_verification",
    "tar_at_far",
    "evaluate_pairs",
    "format_table",
]

DEFAULT_FARS = (1e-3, 1e-2)


@dataclass
class VerificationResult:
    """Result of :func:`kfold_verification`.

    Attributes:
        accuracy_mean: mean held-out fold accuracy (in [0, 1]).
        accuracy_std: population std (``ddof=0``, as insightface) of fold accuracies.
        fold_accuracies: ``(F,)`` held-out accuracy per fold.
        fold_thresholds: ``(F,)`` threshold chosen on the other folds.
        best_threshold: mean of ``fold_thresholds``.
        tar_at_far: ``{far: tar}`` over all pairs (see :func:`tar_at_far`).
        far_thresholds: ``{far: threshold}`` used for each ``tar_at_far`` entry.
        roc_fpr, roc_tpr, roc_thresholds: ROC over all pairs (rule ``score > threshold``),
            thresholds descending, from ``(0, 0)`` to ``(1, 1)``.
        auc: area under that ROC (ties count 1/2).
        num_pairs: number of pairs.
    """

    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    best_threshold: float
    tar_at_far: dict = field(default_factory=dict)
    far_thresholds: dict = field(default_factory=dict)
    roc_fpr: np.ndarray = None
    roc_tpr: np.ndarray = None
    roc_thresholds: np.ndarray = None
    auc: float = float("nan")
    num_pairs: int = 0

    def to_dict(self) -> dict:
        """Plain-python dict (arrays as lists), e.g. for JSON."""
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


# --------------------------------------------------------------------- checks
def _as_scores(scores, name="scores"):
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {s.shape}.")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"`{name}` must be numeric, got dtype {s.dtype}.")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return s


def _as_labels(is_same, n, name="is_same"):
    y = np.asarray(is_same)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"`{name}` must be 1-D with the same length as `scores` ({n}), got shape {y.shape}.")
    if y.dtype != bool:
        if y.size and not (np.issubdtype(y.dtype, np.number) and np.all((y == 0) | (y == 1))):
            raise ValueError(f"`{name}` must be boolean or 0/1.")
        y = y.astype(bool)
    return y


def _fold_ids(folds, n):
    if isinstance(folds, (int, np.integer)) and not isinstance(folds, bool):
        f = int(folds)
        if f < 2 or f > n:
            raise ValueError(f"`folds` must be in [2, number of pairs = {n}], got {f}.")
        sizes = np.full(f, n // f)
        sizes[: n % f] += 1  # np.array_split / KFold(shuffle=False) convention
        return np.repeat(np.arange(f), sizes)
    ids = np.asarray(folds)
    if ids.ndim != 1 or ids.shape[0] != n or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`folds` must be an int or a 1-D int array of length {n} (fold id per pair).")
    _, ids = np.unique(ids, return_inverse=True)
    if ids.max() < 1:
        raise ValueError("`folds` must define at least 2 folds.")
    return ids.reshape(-1)


# ---------------------------------------------------------------- embeddings
def _to_numpy(x):
    if isinstance(x, dict):
        for key in ("embeddings", "embedding"):
            if key in x:
                return _to_numpy(x[key])
        if len(x) == 1:
            return _to_numpy(next(iter(x.values())))
        raise ValueError(f"Embedding function returned a dict with keys {sorted(x)}; expected 'embeddings'.")
    if isinstance(x, (list, tuple)):
        raise ValueError("Embedding function must return one (batch, dim) array, got a list/tuple.")
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _embed_fn(model):
    # FaceRecognizer-like models expose an image -> embedding model as `.embedder`.
    target = getattr(model, "embedder", None)
    if target is None:
        target = model
    if hasattr(target, "predict_on_batch"):
        return lambda x: target.predict_on_batch(x)
    if callable(target):
        return target
    raise ValueError("`embed_fn_or_model` must be a Keras model or a callable.")


def embed_images(embed_fn_or_model, images, batch_size: int = 64, flip: bool = True,
                 normalize: bool = True) -> np.ndarray:
    """L2-normalised embeddings, optionally summed with those of the horizontal flips.

    ``e(x) = f(x) + f(flip(x))`` (``flip=True``, insightface's "flip test") or ``f(x)``,
    then ``e / max(||e||, 1e-12)``.

    Args:
        embed_fn_or_model: a Keras model (its ``embedder`` attribute if present, e.g.
            :class:`FaceRecognizer`, else the model itself; run with ``predict_on_batch``)
            or a callable mapping a float32 ``(b, H, W, 3)`` batch to ``(b, d)``.
        images: uint8 ``(N, H, W, 3)`` (or already-normalised float32 when ``normalize=False``).
        batch_size: images per call.
        flip: add the embedding of the horizontally flipped image.
        normalize: apply :func:`~keras_facemargin.data.pipeline.normalize_images`
            (requires uint8 input, to prevent normalising twice).

    Returns:
        float64 ``(N, d)`` unit-norm embeddings.

    Example::

        emb = embed_images(lambda x: x.mean(axis=(1, 2)), images, flip=False)
    """
    imgs = np.asarray(images)
    if imgs.ndim != 4:
        raise ValueError(f"`images` must have shape (N, H, W, C), got {imgs.shape}.")
    if imgs.shape[0] == 0:
        raise ValueError("`images` is empty.")
    if normalize and imgs.dtype != np.uint8:
        raise ValueError(f"`images` must be uint8 when normalize=True, got {imgs.dtype}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    fn = _embed_fn(embed_fn_or_model)
    outs = []
    for start in range(0, imgs.shape[0], int(batch_size)):
        x = imgs[start:start + int(batch_size)]
        x = normalize_images(x) if normalize else np.asarray(x, np.float32)
        e = _to_numpy(fn(x))
        if flip:
            e = e + _to_numpy(fn(np.ascontiguousarray(x[:, :, ::-1])))
        if e.ndim != 2 or e.shape[0] != x.shape[0]:
            raise ValueError(f"Embedding function must return shape ({x.shape[0]}, d), got {e.shape}.")
        outs.append(e)
    emb = np.concatenate(outs, 0)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def pair_scores(emb_a, emb_b) -> np.ndarray:
    """Cosine similarity of row ``i`` of ``emb_a`` and row ``i`` of ``emb_b``.

    Args:
        emb_a, emb_b: ``(n, d)`` arrays (need not be normalised).

    Returns:
        float64 ``(n,)`` in ``[-1, 1]`` (0 for a zero vector).
    """
    a = np.asarray(emb_a, np.float64)
    b = np.asarray(emb_b, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"`emb_a` and `emb_b` must be 2-D with equal shapes, got {a.shape} and {b.shape}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("`emb_a` / `emb_b` contain NaN or infinite values.")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)


# ------------------------------------------------------------- protocol core
def _candidates(train_scores):
    """Sentinel-below, midpoints, max of sorted unique scores (see module docstring)."""
    u = np.unique(train_scores)
    if u.size == 0:
        return np.array([0.0])
    mid = u[:-1] + (u[1:] - u[:-1]) / 2.0
    mid = np.where(mid >= u[1:], u[:-1], mid)  # guard rounding for adjacent floats
    return np.concatenate([[np.nextafter(u[0], -np.inf)], mid, [u[-1]]])


def _best_threshold(scores, is_same, candidates):
    """First candidate maximising accuracy of ``score > t`` (vectorised over candidates)."""
    g = np.sort(scores[is_same])
    i = np.sort(scores[~is_same])
    correct = (g.size - np.searchsorted(g, candidates, side="right")) + np.searchsorted(
        i, candidates, side="right")
    j = int(np.argmax(correct))
    return candidates[j], correct[j] / max(scores.size, 1)


def tar_at_far(scores, is_same, far_targets=DEFAULT_FARS) -> tuple[dict, dict]:
    """True accept rate at a false accept rate, over all pairs (no interpolation).

    For each target the threshold is the smallest ``t`` with ``FAR(t) = #{impostor > t} / I
    <= target`` -- the ROC operating point with the largest FAR not exceeding the target.
    That is ``t = `` the ``(k+1)``-th largest impostor score, ``k = floor(target * I)``
    (``t`` below every score if ``k >= I``); then ``TAR = #{genuine > t} / G``. When
    ``target * I < 1`` this is TAR at FAR = 0.

    Args:
        scores: ``(n,)`` similarities.
        is_same: ``(n,)`` bool.
        far_targets: iterable of targets in ``(0, 1]``.

    Returns:
        ``({far: tar}, {far: threshold})``.
    """
    s = _as_scores(scores)
    y = _as_labels(is_same, s.size)
    g, imp = s[y], np.sort(s[~y])[::-1]
    if g.size == 0 or imp.size == 0:
        raise ValueError("`is_same` must contain both genuine and impostor pairs for TAR@FAR.")
    tars, thrs = {}, {}
    for far in far_targets:
        far = float(far)
        if not (0.0 < far <= 1.0):
            raise ValueError(f"`far_targets` values must be in (0, 1], got {far}.")
        t = floor_threshold(imp, far, below=np.nextafter(s.min(), -np.inf))
        tars[far] = float(np.mean(g > t))
        thrs[far] = float(t)
    return tars, thrs


def _roc(s, y):
    cand = _candidates(s)[::-1]  # descending: reject-all ... accept-all
    g, i = np.sort(s[y]), np.sort(s[~y])
    tpr = (g.size - np.searchsorted(g, cand, side="right")) / max(g.size, 1)
    fpr = (i.size - np.searchsorted(i, cand, side="right")) / max(i.size, 1)
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))
    return fpr, tpr, cand, auc


def kfold_verification(scores, is_same, folds=10, thresholds=None,
                       far_targets=DEFAULT_FARS) -> VerificationResult:
    """LFW / insightface k-fold verification accuracy.

    For each fold ``k``, the threshold maximising accuracy on the other folds
    (see the module docstring for candidates and tie-breaking) is applied to fold ``k``.

    Args:
        scores: ``(n,)`` finite similarity scores in pair order.
        is_same: ``(n,)`` bool (or 0/1), True for genuine pairs.
        folds: number of contiguous folds (``np.array_split`` boundaries; 10 for LFW),
            or a length-``n`` int array of explicit fold ids.
        thresholds: ``None`` (exact search over training-score midpoints) or a 1-D
            array of candidate thresholds, e.g. ``np.arange(-1, 1, 0.001)``.
        far_targets: FARs for :func:`tar_at_far`; ``()`` to skip.

    Returns:
        :class:`VerificationResult`.

    Example::

        r = kfold_verification(pair_scores(ea, eb), is_same)
        r.accuracy_mean, r.accuracy_std, r.tar_at_far[1e-3]
    """
    s = _as_scores(scores)
    n = s.size
    if n < 2:
        raise ValueError(f"`scores` must hold at least 2 pairs, got {n}.")
    y = _as_labels(is_same, n)
    fid = _fold_ids(folds, n)
    if thresholds is not None:
        cand_fixed = _as_scores(thresholds, "thresholds")
        if cand_fixed.size == 0:
            raise ValueError("`thresholds` must not be empty.")
    num_folds = int(fid.max()) + 1
    accs = np.empty(num_folds)
    thrs = np.empty(num_folds)
    for k in range(num_folds):
        test = fid == k
        tr_s, tr_y = s[~test], y[~test]
        cand = cand_fixed if thresholds is not None else _candidates(tr_s)
        thrs[k], _ = _best_threshold(tr_s, tr_y, cand)
        accs[k] = np.mean((s[test] > thrs[k]) == y[test])
    tars, far_thr = tar_at_far(s, y, far_targets) if len(tuple(far_targets)) else ({}, {})
    fpr, tpr, roc_thr, auc = _roc(s, y)
    return VerificationResult(
        accuracy_mean=float(accs.mean()), accuracy_std=float(accs.std()),
        fold_accuracies=accs, fold_thresholds=thrs, best_threshold=float(thrs.mean()),
        tar_at_far=tars, far_thresholds=far_thr, roc_fpr=fpr, roc_tpr=tpr,
        roc_thresholds=roc_thr, auc=auc, num_pairs=n,
    )


def evaluate_pairs(model, images_a, images_b, is_same, flip: bool = True, batch_size: int = 64,
                   folds=10, thresholds=None, far_targets=DEFAULT_FARS) -> VerificationResult:
    """Embed both sides of each pair, score with cosine similarity, run the k-fold protocol.

    Args:
        model: Keras model / :class:`FaceRecognizer` / callable (see :func:`embed_images`).
        images_a, images_b: uint8 ``(n, H, W, 3)``; row ``i`` of each forms pair ``i``.
        is_same: ``(n,)`` bool.
        flip, batch_size: as in :func:`embed_images`.
        folds, thresholds, far_targets: as in :func:`kfold_verification`.

    Example::

        faces = SyntheticFaces(100, image_size=64)
        a, b, same = faces.pair_images(faces.verification_pairs(600, faces.split(50)[1]))
        print(format_table({"model": evaluate_pairs(model, a, b, same)}))
    """
    a, b = np.asarray(images_a), np.asarray(images_b)
    if a.shape != b.shape:
        raise ValueError(f"`images_a` and `images_b` must have equal shapes, got {a.shape} and {b.shape}.")
    _as_labels(is_same, a.shape[0] if a.ndim else -1)
    ea = embed_images(model, a, batch_size=batch_size, flip=flip)
    eb = embed_images(model, b, batch_size=batch_size, flip=flip)
    return kfold_verification(pair_scores(ea, eb), is_same, folds=folds, thresholds=thresholds,
                              far_targets=far_targets)


def format_table(results: dict) -> str:
    """Fixed-width text table of several :class:`VerificationResult` (name -> result).

    Columns: accuracy mean +- std (%), mean threshold, AUC, and TAR at each FAR present.
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("`results` must be a non-empty dict of name -> VerificationResult.")
    fars = sorted({f for r in results.values() for f in r.tar_at_far})
    name_w = max(4, *(len(str(k)) for k in results))
    head = f"{'name':<{name_w}}  {'accuracy (%)':>15}  {'threshold':>9}  {'AUC':>6}"
    head += "".join(f"  {'TAR@FAR=' + format(f, 'g'):>14}" for f in fars)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        row = (f"{str(name):<{name_w}}  {100 * r.accuracy_mean:>7.2f} +- {100 * r.accuracy_std:<4.2f}  "
               f"{r.best_threshold:>9.4f}  {r.auc:>6.4f}")
        for f in fars:
            v = r.tar_at_far.get(f)
            row += f"  {('-' if v is None else format(100 * v, '.2f')):>14}"
        lines.append(row)
    return "\n".join(lines)
