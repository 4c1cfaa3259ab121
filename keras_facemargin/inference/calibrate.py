"""Decision thresholds calibrated on held-out CelebA identities (never on LFW, the test set).

The calibration set is ``celeba_identities/color_arcface112``: the `HELD_OUT_COUNT` identities with
at least 20 images drawn by `heldout_identities` (seed 12345, LFW-overlap candidates excluded; the
identities ``examples/celeba_lfw.py`` and ``examples/distill_dlib.py`` hold out of training). Its
images are ArcFace-aligned 112x112 crops, so their 5 landmarks are the ArcFace template: each is
re-cropped to the model's geometry (`crop_from_arcface112`) exactly as `FaceVerifier` crops a photo
from detected landmarks, and embedded with the verifier's flip-sum.

Every pair of the held-out images is scored (about 20k genuine and 1M impostor pairs), so
FAR 1e-4 is resolved. Thresholds (same person iff ``score > threshold``):

* ``far_key(f)`` for each FAR ``f``: the floor rule over all impostor pairs (the smallest ``t``
  with ``#{impostor > t} / #impostor <= f``);
* ``"accuracy"``: the threshold of the best balanced accuracy ``(TAR + TNR) / 2`` (LFW's pairs are
  balanced), the default operating point of `FaceVerifier`.

Example::

    from keras_facemargin.inference.calibrate import calibrate_verifier
    cal = calibrate_verifier(kfm.FaceVerifier("dlib_resnet_v1", threshold=0.5), "../shared/data")
    cal["thresholds"]    # {"0.01": ..., "0.001": ..., "0.0001": ..., "accuracy": ...}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_facemargin.data.align import ARCFACE_TEMPLATE_112, align_face
from keras_facemargin.evaluation._far import floor_threshold
from keras_facemargin.utils.images import read_image_file, resize_image

__all__ = ["HELD_OUT_COUNT", "HELD_OUT_SEED", "heldout_identities", "training_sample", "crop_from_arcface112",
           "thresholds_from_scores", "calibrate_verifier", "load_heldout"]

#: Colour identities (>= 20 images) held out of every CelebA training of this package.
HELD_OUT_COUNT = 50
HELD_OUT_SEED = 12345


def heldout_identities(data_dir, count=HELD_OUT_COUNT, seed=HELD_OUT_SEED, exclude=None):
    """The held-out CelebA identity names (sorted): `count` colour identities with >= 20 images,
    the `exclude`d ones left out, drawn with `seed`.

    Args:
        data_dir: the folder holding ``celeba_identities/`` (``$KFM_DATA_DIR``).
        exclude: identity names never held out; default the LFW-overlap candidates
            (``celeba_identities/lfw_overlap_candidates.tsv``).

    Raises:
        FileNotFoundError: no ``celeba_identities/color_arcface112`` under `data_dir`.

    Example::

        heldout_identities("../shared/data")[:3]
    """
    from keras_facemargin.data import read_identity_list

    root = Path(data_dir) / "celeba_identities" / "color_arcface112"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found (expected the celeba_identities folder of KFM_DATA_DIR)")
    if exclude is None:
        exclude = read_identity_list(Path(data_dir) / "celeba_identities" / "lfw_overlap_candidates.tsv")
    excluded = set(exclude)
    names = [n for n in sorted(d.name for d in root.iterdir() if d.is_dir() and len(list(d.iterdir())) >= 20)
             if n not in excluded]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(names, size=min(count, len(names)), replace=False).tolist())


def training_sample(data_dir, size, count=200, seed=0):
    """`count` uint8 ``(size, size, 3)`` images of CelebA *training* identities (neither held out nor
    LFW-overlap candidates): the int8 calibration images of the exports (never LFW).

    Example::

        calib = training_sample("../shared/data", 112)
    """
    from keras_facemargin.data import read_identity_list

    root = Path(data_dir) / "celeba_identities" / "color_arcface112"
    skip = set(heldout_identities(data_dir)) | set(read_identity_list(root.parent / "lfw_overlap_candidates.tsv"))
    files = sorted(f for d in root.iterdir() if d.is_dir() and d.name not in skip for f in d.glob("*.jpg"))
    rng = np.random.default_rng(seed)
    pick = [files[i] for i in rng.choice(len(files), size=min(count, len(files)), replace=False)]
    imgs = []
    for f in pick:
        img, why = read_image_file(f)  # the package's capped decoder
        if img is None:
            raise ValueError(f"{f}: {why}")
        imgs.append(img)
    return np.stack([resize_image(im, size) for im in imgs])


def crop_from_arcface112(image112, crop):
    """Re-crop an ArcFace-aligned 112x112 face to another crop geometry (its landmarks are the template).

    Args:
        image112: uint8 ``(112, 112, 3)``.
        crop: ``{"size", "template"}`` (a registry entry's ``crop``).

    Returns:
        uint8 ``(size, size, 3)``; parts outside the 112 crop are black.

    Example::

        chip = crop_from_arcface112(face112, kfm.model_info("dlib_resnet_v1")["crop"])
    """
    return align_face(image112, ARCFACE_TEMPLATE_112, int(crop["size"]), template=np.asarray(crop["template"]),
                      weights=crop.get("weights"))


def thresholds_from_scores(genuine, impostor, fars=(1e-2, 1e-3, 1e-4)):
    """Thresholds at `fars` (floor rule) and at the best balanced accuracy, with the rates they give.

    Args:
        genuine, impostor: 1-D score arrays.
        fars: target false accept rates.

    Returns:
        ``{"thresholds": {key: t}, "tar": {key: rate}, "far": {key: rate}, "balanced_accuracy": float}``
        with keys ``repr(far)`` and ``"accuracy"``.

    Example::

        thresholds_from_scores(np.array([0.9, 0.8]), np.array([0.1, 0.3]))["thresholds"]["accuracy"]
    """
    genuine = np.asarray(genuine, np.float64)
    impostor = np.asarray(impostor, np.float64)
    if genuine.ndim != 1 or impostor.ndim != 1 or not genuine.size or not impostor.size:
        raise ValueError("`genuine` and `impostor` must be non-empty 1-D score arrays.")
    desc = np.sort(impostor)[::-1]
    out = {"thresholds": {}, "tar": {}, "far": {}}
    for f in fars:
        t = float(floor_threshold(desc, f))
        out["thresholds"][repr(float(f))] = t
    # best balanced accuracy: candidate thresholds are the scores themselves
    cand = np.unique(np.concatenate([genuine, impostor]))
    g = np.sort(genuine)
    i = np.sort(impostor)
    tar = 1.0 - np.searchsorted(g, cand, side="right") / g.size  # P(genuine > t)
    tnr = np.searchsorted(i, cand, side="right") / i.size        # P(impostor <= t)
    bal = (tar + tnr) / 2
    best = np.flatnonzero(bal == bal.max())
    # the middle of the best plateau, halfway to the next score: robust to ties
    k = best[len(best) // 2]
    t = float(cand[k] if k + 1 >= cand.size else (cand[k] + cand[k + 1]) / 2)
    out["thresholds"]["accuracy"] = t
    for key, t in out["thresholds"].items():
        out["tar"][key] = float(np.mean(genuine > t))
        out["far"][key] = float(np.mean(impostor > t))
    out["balanced_accuracy"] = float(bal.max())
    return out


def load_heldout(data_dir, identities=None):
    """``(images112, labels, names)`` of the held-out identities (uint8 ArcFace crops)."""
    from keras_facemargin.data import load_identity_folder

    identities = heldout_identities(data_dir) if identities is None else list(identities)
    root = Path(data_dir) / "celeba_identities" / "color_arcface112"
    keep = set(identities)
    data = load_identity_folder(root, image_size=112, crop="none",
                                exclude=[d.name for d in root.iterdir() if d.is_dir() and d.name not in keep])
    return data.images, data.labels, list(data.class_names)


def calibrate_verifier(verifier, data_dir, fars=(1e-2, 1e-3, 1e-4), identities=None):
    """Thresholds for `verifier`'s model on every pair of the held-out CelebA identities.

    Args:
        verifier: a :class:`keras_facemargin.FaceVerifier` (its crop geometry, normalisation and
            flip-sum embedding are used; its own threshold is ignored).
        data_dir: ``$KFM_DATA_DIR`` (holds ``celeba_identities/``).
        fars: target false accept rates.
        identities: override the held-out identities.

    Returns:
        `thresholds_from_scores`'s dict plus ``num_genuine``, ``num_impostor``, ``num_images``,
        ``identities`` and ``set`` (a description), ready for the registry's ``thresholds`` /
        ``calibration`` fields.

    Example::

        cal = calibrate_verifier(kfm.FaceVerifier("dlib_resnet_v1", threshold=0.5), "../shared/data")
    """
    images, labels, names = load_heldout(data_dir, identities)
    crops = np.stack([crop_from_arcface112(im, verifier.crop) for im in images])
    if crops.shape[1:3] != verifier.image_size:

        crops = np.stack([resize_image(c, verifier.image_size) for c in crops])
    emb = verifier.embed_crops(crops)
    scores = emb @ emb.T
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    s = scores[iu]
    out = thresholds_from_scores(s[same], s[~same], fars)
    out.update({"num_genuine": int(same.sum()), "num_impostor": int((~same).sum()), "num_images": int(len(labels)),
                "identities": len(names),
                "set": (f"every pair of {len(labels)} images of {len(names)} held-out CelebA identities "
                        "(celeba_identities/color_arcface112, inference.calibrate.heldout_identities), re-cropped "
                        "from the ArcFace template to the model's crop, flip-sum")})
    return out
