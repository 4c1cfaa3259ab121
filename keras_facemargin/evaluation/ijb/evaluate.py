"""The whole IJB evaluation: meta files -> features -> templates -> 1:1 table (+ 1:N).

Example::

    res = evaluate_ijb(model, "IJB_release/IJBC", "IJBC")
    print(format_tar_far_table({"model": res["verification"]}))
"""

from __future__ import annotations

from keras_facemargin.evaluation.ijb.features import extract_ijb_features, image_to_template_features
from keras_facemargin.evaluation.ijb.identification import evaluate_ijb_1n
from keras_facemargin.evaluation.ijb.meta import load_ijb_meta
from keras_facemargin.evaluation.ijb.scores import tar_far_table, verify_templates

__all__ = ["evaluate_ijb"]


def evaluate_ijb(model, root, target="IJBC", flip=True, detector_score=True, normalize_images=False,
                 batch_size=128, image_size=112, features=None, progress=True, far_convention="floor",
                 with_1n=True):
    """Full IJB evaluation: features -> templates -> 1:1 TAR@FAR table (+ 1:N when the csvs exist).

    Args:
        model: embedding model (ignored when ``features`` is given).
        root: IJB folder; target: ``"IJBC"`` / ``"IJBB"``.
        flip, detector_score, normalize_images: pipeline switches (module docstring).
        batch_size, image_size: feature extraction.
        features: precomputed ``(N, d)`` image features in meta order (skips the model).
        progress: tqdm bars.
        far_convention: see :func:`tar_far_table`.
        with_1n: run 1:N when the files exist.

    Returns:
        dict: ``verification`` (:func:`tar_far_table`), ``scores``, ``identification``
        (:func:`evaluate_ijb_1n` or None), ``features``, ``meta``.
    """
    meta = load_ijb_meta(root, target, with_1n=with_1n)
    if features is None:
        features, _ = extract_ijb_features(model, root, meta, image_size=image_size, batch_size=batch_size,
                                           flip=flip, progress=progress)
    elif len(features) != len(meta.names):
        raise ValueError(f"`features` has {len(features)} rows for {len(meta.names)} images in the meta files.")
    tf, tids = image_to_template_features(features, meta.templates, meta.medias,
                                          meta.det_scores if detector_score else None, normalize_images)
    scores = verify_templates(tf, tids, meta.pair_t1, meta.pair_t2, progress=progress)
    ver = tar_far_table(scores, meta.pair_labels, far_convention=far_convention)
    ident = evaluate_ijb_1n(tf, tids, meta) if (with_1n and meta.probe is not None and meta.galleries) else None
    return {"verification": ver, "scores": scores, "identification": ident, "features": features, "meta": meta}
