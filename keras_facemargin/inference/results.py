"""Results of `keras_facemargin.FaceVerifier`: a face, a verdict, an identification, batch embeddings, all faces.

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

__all__ = ["Face", "VerifyResult", "IdentifyResult", "PhotoEmbedding", "EmbedManyResult", "DetectedFace",
           "AllFacesResult"]


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
        file_sha256: hex sha256 of the photo file's bytes that were decoded (``None`` for an array);
            a gallery's photo key (``"sha256:" + file_sha256``) without a second read of the file.
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
    file_sha256: str = field(default=None, repr=False)

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




@dataclass
class PhotoEmbedding:
    """One photo of :meth:`FaceVerifier.embed_many`: its embedding and face, or its error.

    Attributes:
        source: the photo's path or label.
        embedding: float64 ``(d,)`` unit-norm flip-sum embedding (``None`` on error).
        face: the embedded :class:`Face` (``None`` on error).
        error: the photo's :class:`~keras_facemargin.errors.FaceVerifierError` (``None`` on success).
    """

    source: str
    embedding: np.ndarray = field(default=None, repr=False)
    face: Face = None
    error: Exception = None

    @property
    def ok(self) -> bool:
        """True when the photo was embedded."""
        return self.error is None

    def to_dict(self, include_embedding: bool = False) -> dict:
        """``{"status": "ok", "source", "face"[, "embedding"]}`` or the error's ``to_dict()``."""
        if self.error is not None:
            return self.error.to_dict()
        d = {"status": "ok", "source": self.source, "face": self.face.to_dict()}
        if include_embedding:
            d["embedding"] = [float(v) for v in self.embedding]
        return d


@dataclass
class EmbedManyResult:
    """Result of :meth:`FaceVerifier.embed_many`: one :class:`PhotoEmbedding` per photo, in input order.

    Iterable and indexable like the list ``items``.

    Attributes:
        items: the :class:`PhotoEmbedding` of each photo.
        model: the model's name.
        seconds: wall time of the run.

    Example::

        result = verifier.embed_many(paths)
        result.embeddings.shape, result.sources, [e.reason for e in result.errors]
    """

    items: list
    model: str = None
    seconds: float = 0.0

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, i):
        return self.items[i]

    @property
    def embeddings(self) -> np.ndarray:
        """float64 ``(n_ok, d)``: the embeddings of the photos that succeeded, in input order."""
        rows = [it.embedding for it in self.items if it.ok]
        return np.stack(rows) if rows else np.zeros((0, 0))

    @property
    def sources(self) -> list:
        """The sources of the rows of :attr:`embeddings`."""
        return [it.source for it in self.items if it.ok]

    @property
    def errors(self) -> list:
        """The errors of the photos that failed, in input order."""
        return [it.error for it in self.items if not it.ok]

    def to_dict(self) -> dict:
        """``{"status": "ok", "model", "photos", "embedded", "failed", "seconds", "results": [...]}``."""
        return {"status": "ok", "model": self.model, "photos": len(self.items), "embedded": len(self.sources),
                "failed": len(self.errors), "seconds": float(self.seconds),
                "results": [it.to_dict() for it in self.items]}


@dataclass
class DetectedFace(Face):
    """A :class:`Face` of :meth:`FaceVerifier.detect_all`, with its embedding and gallery match.

    Attributes:
        embedding: float64 ``(d,)`` unit-norm flip-sum embedding.
        identity: best gallery identity if its score ``> threshold``, else ``"unknown"`` (``None``
            without a gallery).
        is_known: whether ``score > threshold`` (``None`` without a gallery).
        score: cosine similarity to the best gallery template (``None`` without a gallery).
        candidates: the top gallery ``{"identity", "score", "num_images"}``, best first.
        (and the :class:`Face` attributes: ``box``, ``confidence``, ``landmarks``, ``crop``, ...)
    """

    embedding: np.ndarray = field(default=None, repr=False)
    identity: str = None
    is_known: bool = None
    score: float = None
    candidates: list = field(default_factory=list)

    def to_dict(self, include_crop: bool = False, include_embedding: bool = False) -> dict:
        """:meth:`Face.to_dict` plus ``identity``, ``known``, ``score``, ``candidates`` (with a gallery)."""
        d = Face.to_dict(self, include_crop)
        if self.identity is not None:
            d.update({"identity": self.identity, "known": bool(self.is_known), "score": float(self.score),
                      "candidates": [dict(c) for c in self.candidates]})
        if include_embedding:
            d["embedding"] = [float(v) for v in self.embedding]
        return d


@dataclass
class AllFacesResult:
    """Result of :meth:`FaceVerifier.detect_all`: every face of one photo (iterable like ``faces``).

    Attributes:
        source: the photo's path or label.
        image_shape: ``(H, W)`` of the photo.
        faces: the :class:`DetectedFace` s, in detector order (empty when no face is found).
        model: the model's name.
        threshold: the threshold of the gallery matches (``None`` without a gallery).
    """

    source: str
    image_shape: tuple
    faces: list
    model: str = None
    threshold: float = None

    def __len__(self):
        return len(self.faces)

    def __iter__(self):
        return iter(self.faces)

    def __getitem__(self, i):
        return self.faces[i]

    def to_dict(self, include_crops: bool = False) -> dict:
        """``{"status": "ok", "source", "image_shape", "model", "threshold", "faces": [...]}``."""
        return {"status": "ok", "source": self.source, "image_shape": [int(v) for v in self.image_shape],
                "model": self.model, "threshold": None if self.threshold is None else float(self.threshold),
                "faces": [f.to_dict(include_crops) for f in self.faces]}
