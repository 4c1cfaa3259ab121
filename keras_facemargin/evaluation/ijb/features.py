"""IJB image features: 5-point aligned crops, model features, media / template pooling.

Example::

    feats, scores = extract_ijb_features(model, "IJB_release/IJBC", meta)
    tf, tids = image_to_template_features(feats, meta.templates, meta.medias, scores)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_facemargin.data.align import align_face
from keras_facemargin.errors import ImageFileError
from keras_facemargin.evaluation.ijb.meta import IJBMeta
from keras_facemargin.evaluation.verification import _embed_fn, _to_numpy
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, read_image_file

__all__ = ["align_ijb_images", "extract_ijb_features", "image_to_template_features"]


def _align(image, landmarks, image_size):
    return align_face(image, landmarks, image_size=image_size)


def align_ijb_images(root, names, landmarks, image_size=112, num_threads=4,
                     max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Read ``<root>/loose_crop/<name>`` and align each with its 5 landmarks -> uint8 RGB ``(n, S, S, 3)``.

    Raises:
        FileNotFoundError: a missing image. ImageFileError: an undecodable or over-cap image
        (``max_image_pixels``, checked on the header before decoding).
    """
    crop = Path(root) / "loose_crop"

    def one(i):
        p = crop / str(names[i])
        if not p.is_file():
            raise FileNotFoundError(f"IJB image not found: {p}")
        img, why = read_image_file(p, max_image_pixels)
        if img is None:
            raise ImageFileError(p, None, "bad_image", f"IJB image cannot be decoded: {why}")
        return _align(img, landmarks[i], int(image_size))

    with ThreadPoolExecutor(max(1, int(num_threads))) as ex:
        return np.stack(list(ex.map(one, range(len(names)))))


def extract_ijb_features(model, root, meta: IJBMeta, image_size=112, batch_size=128, flip=True,
                         progress=True, num_threads=4):
    """Aligned-image features for every image of ``meta`` (insightface ``get_image_feature``).

    Args:
        model: Keras model / ``FaceRecognizer`` (``embedder``) / callable on normalised float32 batches.
        root: the IJB folder (``loose_crop/``).
        meta: :class:`IJBMeta`.
        image_size: aligned crop side.
        batch_size: images per forward pass.
        flip: return ``f(x) + f(flip(x))``.
        progress: tqdm bar.
        num_threads: image decoding / alignment threads.

    Returns:
        ``(features float32 (N, d) un-normalised, det_scores float32 (N,))``.
    """
    from keras_facemargin.utils.images import normalize_images

    fn = _embed_fn(model)
    n = len(meta.names)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"{meta.target} features", unit="img")
    out = None
    step = int(batch_size)
    for s in range(0, n, step):
        e = min(n, s + step)
        imgs = align_ijb_images(root, meta.names[s:e], meta.landmarks[s:e], image_size, num_threads)
        x = normalize_images(imgs)
        f = _to_numpy(fn(x))
        if flip:
            f = f + _to_numpy(fn(np.ascontiguousarray(x[:, :, ::-1])))
        if out is None:
            out = np.empty((n, f.shape[1]), np.float32)
        out[s:e] = f
        if bar is not None:
            bar.update(e - s)
    if bar is not None:
        bar.close()
    return out, meta.det_scores.astype(np.float32)


def image_to_template_features(features, templates, medias, det_scores=None, normalize_images=False):
    """Template features: media mean, template sum, L2 norm (insightface ``image2template_feature``).

    Args:
        features: ``(N, d)`` image features.
        templates, medias: ``(N,)`` int ids per image.
        det_scores: optional ``(N,)`` weights multiplied into each image feature (detector score, "D1").
        normalize_images: L2-normalise image features first ("N0"; insightface's default N1 keeps norms).

    Returns:
        ``(template_feats float32 (T, d) unit-norm, unique_templates int64 (T,) ascending)``.

    Example::

        tf, tids = image_to_template_features(feats, meta.templates, meta.medias, meta.det_scores)
    """
    f = np.asarray(features, np.float64)
    t = np.asarray(templates).astype(np.int64).reshape(-1)
    m = np.asarray(medias).astype(np.int64).reshape(-1)
    if f.ndim != 2 or f.shape[0] != t.size or t.size != m.size:
        raise ValueError(f"`features` (N, d), `templates` (N,), `medias` (N,) must agree; got {f.shape}, "
                         f"{t.shape}, {m.shape}.")
    if normalize_images:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    if det_scores is not None:
        w = np.asarray(det_scores, np.float64).reshape(-1)
        if w.size != t.size:
            raise ValueError(f"`det_scores` must have {t.size} entries, got {w.size}.")
        f = f * w[:, None]
    order = np.lexsort((m, t))
    ts, ms, fs = t[order], m[order], f[order]
    # media groups (template, media) -> mean
    new_media = np.ones(ts.size, bool)
    new_media[1:] = (ts[1:] != ts[:-1]) | (ms[1:] != ms[:-1])
    starts = np.flatnonzero(new_media)
    counts = np.diff(np.append(starts, ts.size))
    media_feats = np.add.reduceat(fs, starts, axis=0) / counts[:, None]
    media_t = ts[starts]
    # template groups -> sum of media means
    new_t = np.ones(media_t.size, bool)
    new_t[1:] = media_t[1:] != media_t[:-1]
    tstarts = np.flatnonzero(new_t)
    tf = np.add.reduceat(media_feats, tstarts, axis=0)
    tf /= np.maximum(np.linalg.norm(tf, axis=1, keepdims=True), 1e-12)
    return tf.astype(np.float32), media_t[tstarts]
