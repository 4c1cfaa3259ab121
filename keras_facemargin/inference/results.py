"""Results of `keras_facemargin.FaceVerifier`: a detected and aligned face, a verdict, an identification.

Each has ``to_dict()`` (JSON-friendly). Re-exported by :mod:`keras_facemargin.inference.verifier`.

Example::

    r = verifier.verify("a.jpg", "b.jpg")      # a VerifyResult
    json.dumps(r.to_dict())
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Face", "VerifyResult", "IdentifyResult"]


def _crop_png_base64(crop):
    ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


@dataclass
class Face:
    """One detected, aligned face.

    Attributes:
        source: the image path, or ``"<array>"`` (or the ``name`` given).
        box: ``(x, y, w, h)`` in source-image pixels (``None`` if the detector gives none).
        confidence: detector confidence (``None`` if the detector gives none).
        landmarks: float ``(5, 2)`` source-image ``(x, y)``: left eye, right eye, nose, left / right mouth
            corner (image-left first).
        aligned_landmarks: the landmarks mapped into ``crop`` (close to the ArcFace template scaled to
            the crop size).
        crop: uint8 ``(H, W, 3)`` aligned crop, at the model's input size, that was embedded.
        num_faces: faces detected in the image.
        index: which of them was used.
        image_shape: ``(H, W)`` of the source image.
    """

    source: str
    box: tuple
    confidence: float
    landmarks: np.ndarray
    aligned_landmarks: np.ndarray
    crop: np.ndarray = field(repr=False)
    num_faces: int = 1
    index: int = 0
    image_shape: tuple = ()

    def to_dict(self, include_crop: bool = False) -> dict:
        """JSON-friendly dict; ``include_crop=True`` adds ``crop_png_base64`` (the crop as a base64 PNG)."""
        d = {"source": self.source, "box": None if self.box is None else [float(v) for v in self.box],
             "confidence": None if self.confidence is None else float(self.confidence),
             "landmarks": np.round(self.landmarks, 2).tolist(),
             "aligned_landmarks": np.round(self.aligned_landmarks, 2).tolist(),
             "crop_size": [int(self.crop.shape[0]), int(self.crop.shape[1])],
             "num_faces": int(self.num_faces), "index": int(self.index),
             "image_shape": [int(v) for v in self.image_shape]}
        if include_crop:
            d["crop_png_base64"] = _crop_png_base64(self.crop)
        return d


@dataclass
class VerifyResult:
    """Result of :meth:`FaceVerifier.verify`.

    Attributes:
        score: cosine similarity of the two flip-sum embeddings, in ``[-1, 1]``.
        is_same: ``score > threshold``.
        threshold: the decision threshold used.
        far: the FAR the threshold was calibrated for (``None`` for an explicit threshold).
        threshold_source: ``"explicit"`` or ``"registry:<model>"``.
        model: the model's name.
        faces: ``(face_a, face_b)`` (:class:`Face`).
    """

    score: float
    is_same: bool
    threshold: float
    far: float
    threshold_source: str
    model: str
    faces: tuple

    def to_dict(self, include_crops: bool = False) -> dict:
        """``{"status": "ok", "score", "same", "threshold", "far", "threshold_source", "model", "faces"}``."""
        return {"status": "ok", "score": float(self.score), "same": bool(self.is_same),
                "threshold": float(self.threshold), "far": self.far, "threshold_source": self.threshold_source,
                "model": self.model, "faces": [f.to_dict(include_crops) for f in self.faces]}


@dataclass
class IdentifyResult:
    """Result of :meth:`FaceVerifier.identify`.

    Attributes:
        identity: the best gallery identity if ``score > threshold``, else ``"unknown"``.
        is_known: ``score > threshold``.
        score: cosine similarity to the best identity's template.
        threshold, far, threshold_source, model: as in :class:`VerifyResult` (the 1:1 threshold; against
            ``N`` identities the chance of some false match is up to ``N`` times ``far``).
        candidates: the ``top_k`` best ``{"identity", "score", "num_images"}``, best first.
        face: the query :class:`Face`.
    """

    identity: str
    is_known: bool
    score: float
    threshold: float
    far: float
    threshold_source: str
    model: str
    candidates: list
    face: Face

    def to_dict(self, include_crops: bool = False) -> dict:
        """``{"status": "ok", "identity", "known", "score", "threshold", "far", ..., "candidates", "face"}``."""
        return {"status": "ok", "identity": self.identity, "known": bool(self.is_known), "score": float(self.score),
                "threshold": float(self.threshold), "far": self.far, "threshold_source": self.threshold_source,
                "model": self.model, "candidates": [dict(c) for c in self.candidates],
                "face": self.face.to_dict(include_crops)}


