"""Photo to verdict: detect, align, embed and compare faces (1:1 verification, 1:N identification).

Pipeline of :class:`FaceVerifier` (the same as the LFW ``align="mtcnn"`` evaluation, so LFW-calibrated
thresholds apply):

1. read the photo (a path, or an RGB uint8 array) with OpenCV (EXIF orientation applied);
2. detect faces and 5 landmarks with MTCNN (:class:`~keras_facemargin.data.align.MTCNNDetector`);
   pick one face by ``face_policy``;
3. similarity-align the 5 landmarks to the model's crop template (the registry entry's ``crop``: the
   ArcFace 112x112 template for insightface-style models, dlib's 150x150 chip for
   ``dlib_resnet_v1``; :func:`~keras_facemargin.data.align.align_face`), then resize to the model's
   input size;
4. normalise (``(x - mean) / std``), embed the crop and its horizontal flip, sum, L2-normalise
   (:func:`~keras_facemargin.evaluation.embed_images`);
5. cosine similarity; **same person iff ``score > threshold``** (the package's convention, under
   which the LFW-calibrated thresholds give their stated FAR).

Outcomes other than a verdict are typed exceptions, all subclasses of :class:`FaceVerifierError` (a
``ValueError``) with ``reason``, ``file`` (the image concerned, ``"<array>"`` for arrays), ``exit_code``
(used by ``kfm verify`` and ``kfm identify``) and a JSON-friendly ``to_dict()``:

* :class:`ImageReadError` (exit 5): ``reason="not_found"`` (also a ``FileNotFoundError``),
  ``"not_an_image"`` (a directory, a FIFO, or bytes in no image format), ``"too_large"`` (over
  ``utils.images.PHOTO_MAX_BYTES`` or ``PHOTO_MAX_PIXELS``, refused before decoding) or ``"unreadable"`` (an image file
  that does not decode: truncated or corrupt);
* :class:`NoFaceError` (exit 3): ``"no_face"``, nothing detected (or the landmarks cannot be aligned);
* :class:`MultipleFacesError` (exit 4): ``"multiple_faces"``, several faces with ``face_policy="error"``
  (the default ``"central"`` uses the large-and-central face, facenet's rule, which picks the face a
  photo is about: 1 disagreement with the most central face over LFW's 1,034 multi-face photos, 36
  for ``"largest"``; ``"largest"`` uses the largest box; ``"best"`` the highest confidence);
* :class:`GalleryError` (exit 6): ``"gallery_mismatch"`` (built with another model or preprocessing),
  ``"gallery_format"`` (not a gallery file, or a damaged one), ``"gallery_empty"``;
* :class:`ConfigurationError` (exit 2): ``"no_model"``, ``"no_threshold"`` (the message tells how to
  calibrate), ``"bad_far"``, ...

Very large photos are detected at full resolution (MTCNN time grows with the pixel count).

Example::

    import keras_facemargin as kfm
    verifier = kfm.FaceVerifier()                       # the shipped default model and its thresholds
    result = verifier.verify("a.jpg", "b.jpg")
    result.score, result.is_same, result.to_dict()
    from keras_facemargin.inference.gallery import Gallery
    gallery = Gallery.build(verifier, "people/")        # people/<identity>/<images>
    gallery.save("people.npz")
    verifier.identify("query.jpg", gallery).identity    # a name or "unknown"
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from keras_facemargin.data.align import align_face, estimate_transform, select_face, transform_points
from keras_facemargin.utils.images import PACKAGE_NORMALIZATION, read_photo, read_photo_with_sha256, resize_image
from keras_facemargin.inference.results import Face, IdentifyResult, VerifyResult
from keras_facemargin.utils.images import normalize_images
from keras_facemargin.evaluation.verification import embed_images, kfold_verification, pair_scores
from keras_facemargin.inference.model_source import resolve_model, resolve_threshold
from keras_facemargin.errors import (  # noqa: F401  (re-exported)
    ConfigurationError, FaceVerifierError, GalleryError, ImageReadError, MultipleFacesError, NoFaceError,
    _ImageNotFoundError)

__all__ = [
    "FaceVerifier",
    "Face",
    "VerifyResult",
    "IdentifyResult",
    "calibrate_thresholds",
    "read_image",
    "far_key",
    "FACE_POLICIES",
    "PACKAGE_NORMALIZATION",
    "FaceVerifierError",
    "ImageReadError",
    "NoFaceError",
    "MultipleFacesError",
    "GalleryError",
    "ConfigurationError",
]

logger = logging.getLogger(__name__)

#: ``face_policy`` values: which face to use when a photo holds several.
FACE_POLICIES = ("central", "largest", "best", "error")
#: ``keras_facemargin.data.normalize_images``: ``(x - 127.5) / 128``.
ALIGN_SIZE = 112  # faces are aligned to the ArcFace 112x112 template, then resized
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jp2")


# ------------------------------------------------------------------ errors
# ------------------------------------------------------------------- images
def read_image(image, name=None):
    """Return an RGB uint8 ``(H, W, 3)`` image and a name for messages.

    Args:
        image: a path (``str`` / ``Path``; decoded with OpenCV, EXIF orientation applied), or an
            RGB uint8 array ``(H, W, 3)`` (also ``(H, W)`` grey and ``(H, W, 4)`` RGBA, converted).
        name: label used in results and errors (default: the path, or ``"<array>"``).

    Returns:
        ``(rgb, name)``.

    Raises:
        ImageReadError: ``not_found`` (also a ``FileNotFoundError``), ``not_an_image`` (a directory,
            or bytes in no image format) or ``unreadable`` (an image format that does not decode:
            truncated or corrupt), naming the file.
        TypeError / ValueError: an input that is neither a path nor a uint8 image array.

    Example::

        rgb, name = read_image("photo.jpg")
    """
    rgb, label, _ = _read_image(image, name, with_sha256=False)
    return rgb, label


def _read_image(image, name=None, with_sha256=True):
    """:func:`read_image` plus, when asked, the hex sha256 of the file bytes decoded (``None`` for an array
    or when not asked): ``(rgb, name, sha256)``."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        label = str(image) if name is None else str(name)
        rgb, problem, digest = read_photo_with_sha256(path) if with_sha256 else (*read_photo(path), None)
        if problem is not None:
            reason, detail = problem
            raise (_ImageNotFoundError if reason == "not_found" else ImageReadError)(reason, detail, label)
        return rgb, label, digest
    if isinstance(image, np.ndarray):
        label = "<array>" if name is None else str(name)
        if image.dtype != np.uint8:
            raise ValueError(f"{label}: image arrays must be RGB uint8 (H, W, 3), got dtype {image.dtype} "
                             "(scale floats to 0..255 and cast to uint8).")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"{label}: image arrays must be RGB uint8 (H, W, 3), got shape {image.shape}.")
        return np.ascontiguousarray(image), label, None
    raise TypeError(f"Expected an image path (str / Path) or an RGB uint8 array, got {type(image).__name__}.")




def _check_normalization(normalization, where="normalization"):
    if callable(normalization):
        return normalization
    if not isinstance(normalization, dict) or set(normalization) != {"mean", "std"}:
        raise ConfigurationError("bad_normalization", f"`{where}` must be a dict {{'mean', 'std'}} (scalars or "
                                 f"3 per-channel values) or a callable, got {normalization!r}.")
    out = {}
    for k in ("mean", "std"):
        v = normalization[k]
        arr = np.asarray(v, np.float64)
        if arr.shape not in ((), (3,)) or not np.all(np.isfinite(arr)) or (k == "std" and np.any(arr == 0)):
            raise ConfigurationError("bad_normalization", f"`{where}[{k!r}]` must be a finite scalar or 3 values"
                                     f"{' (non-zero)' if k == 'std' else ''}, got {v!r}.")
        out[k] = float(arr) if arr.shape == () else [float(x) for x in arr]
    return out


def _normalize(images, normalization):
    if callable(normalization):
        return np.asarray(normalization(images), np.float32)
    if normalization == PACKAGE_NORMALIZATION:
        return normalize_images(images)
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)


def _normalization_json(normalization):
    if callable(normalization):
        return {"callable": f"{getattr(normalization, '__module__', '?')}."
                            f"{getattr(normalization, '__qualname__', type(normalization).__name__)}"}
    return dict(normalization)


def _check_crop(crop):
    if not isinstance(crop, dict) or not {"kind", "size", "template"} <= set(crop):
        raise ConfigurationError("bad_crop", f"`crop` must be a dict with 'kind', 'size' and 'template', got {crop!r}.")
    size = crop["size"]
    template = np.asarray(crop["template"], np.float64) if crop["template"] is not None else None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024 \
            or template is None or template.shape != (5, 2) or not np.all(np.isfinite(template)) \
            or template.min() < 0 or template.max() > size:
        raise ConfigurationError("bad_crop", f"`crop` needs an integer size in 16..1024 and 5 (x, y) template points "
                                 f"inside it, got size {size!r}, template {crop['template']!r}.")
    weights = crop.get("weights")
    if weights is not None:
        w = np.asarray(weights, np.float64)
        if w.shape != (5,) or not np.all(np.isfinite(w)) or w.min() < 0 or np.count_nonzero(w) < 2:
            raise ConfigurationError("bad_crop", f"`crop['weights']` must be 5 non-negative values, at least 2 "
                                     f"positive, got {weights!r}.")
        weights = w.tolist()
    return {"kind": str(crop["kind"]), "size": int(size), "template": template.tolist(), "weights": weights}


def far_key(far) -> str:
    """The registry key of a FAR: ``repr(float(far))`` (``1e-3 -> "0.001"``, ``1e-2 -> "0.01"``)."""
    return repr(float(far))


def _check_far(far):
    try:
        f = float(far)
    except (TypeError, ValueError):
        f = float("nan")
    if not (0.0 < f <= 1.0):
        raise ConfigurationError("bad_far", f"`far` must be a false accept rate in (0, 1], e.g. 1e-3; got {far!r}.")
    return f


# ----------------------------------------------------------------- verifier
def _registry():
    from keras_facemargin.pretrained import registry

    return registry


def _load_by_name(name, weights):
    from keras_facemargin.pretrained import loader

    return loader.load(name, weights=weights)


class FaceVerifier:
    """Photo -> face -> embedding -> verdict (see the module docstring for the pipeline and the errors).

    Args:
        model: a name of ``keras_facemargin.list_models()`` (loaded with ``keras_facemargin.load``;
            its registry entry gives ``normalization`` and ``thresholds``), a path to a ``.keras``
            model (FaceRecognizer, embedder or backbone), a Keras model (embedder, backbone or
            FaceRecognizer), an exported model (a ``.tflite`` / ``.onnx`` file or a SavedModel
            directory from ``kfm export``, run with its runtime; the metadata file written beside it
            gives ``normalization``, ``crop``, input size and ``thresholds``), or ``None``:
            ``keras_facemargin.pretrained.registry.DEFAULT_MODEL``. See
            :mod:`keras_facemargin.inference.model_source`.
        threshold: cosine threshold (same person iff ``score > threshold``); default: the registry
            entry's (or the export metadata's) ``thresholds["accuracy"]`` (best balanced accuracy), or ``thresholds[far_key(far)]``
            with ``far``. Registry thresholds are calibrated on held-out CelebA identities, never on
            LFW (:mod:`keras_facemargin.inference.calibrate`).
        far: a false accept rate (``1e-2``, ``1e-3``, ``1e-4``) whose calibrated threshold is used
            instead of the accuracy operating point (ignored with ``threshold``).
        detector: an object with ``detect_batch(list of RGB uint8) -> [[{"box", "confidence",
            "landmarks"}, ...], ...]`` (or ``detect(rgb)``); default a ``MTCNNDetector()`` (created
            on first use).
        normalization: ``{"mean", "std"}`` (``(x - mean) / std``) or a callable on uint8 batches;
            default: the registry entry's ``normalization`` for a named model, else
            ``(x - 127.5) / 128`` (``keras_facemargin.data.normalize_images``).
        face_policy: which face of a photo with several: ``"central"`` (default: large and central,
            facenet's rule ``area - 2 * offset**2``), ``"largest"`` box area, ``"best"`` detector confidence, or
            ``"error"`` (raise :class:`MultipleFacesError`).
        weights: for a named model, a local weights file (``keras_facemargin.load(name, weights=)``).
        batch_size: crops per model call.
        crop: the crop geometry ``{"kind", "size", "template"[, "weights"]}`` (5 template points in a
            ``size`` x ``size`` crop, optional point weights of the similarity fit); default: the registry entry's ``crop`` (dlib's chip for
            ``dlib_resnet_v1``), else the ArcFace 112 template. The crop is resized to the model's
            input size when they differ.

    Raises:
        ConfigurationError: no model (``DEFAULT_MODEL`` unset and ``model=None``), no threshold for
            ``far`` (the message tells how to calibrate), bad ``far`` / ``normalization`` / policy.
        ExportMetadataError: an exported model without its metadata file, or with one that is
            malformed or records another file's sha256 (a ``ConfigurationError``).

    Example::

        verifier = FaceVerifier("arcface_r50", weights="backbone.pth", far=1e-3)
        r = verifier.verify("a.jpg", "b.jpg")
        print(r.score, r.is_same)
    """

    def __init__(self, model=None, threshold=None, far=None, detector=None, normalization=None,
                 face_policy="central", weights=None, batch_size: int = 32, crop=None):
        if face_policy not in FACE_POLICIES:
            raise ConfigurationError("bad_face_policy", f"`face_policy` must be one of {FACE_POLICIES}, "
                                     f"got {face_policy!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ConfigurationError("bad_batch_size", f"`batch_size` must be a positive integer, got {batch_size!r}.")
        self.face_policy = face_policy
        self.batch_size = int(batch_size)
        self._detector = detector
        self.far = None if far is None else _check_far(far)
        source = resolve_model(model, weights)  # reads metadata only; weights load after the threshold
        self.model_name, self.registry_entry, self.export_metadata = source.name, source.info, source.metadata
        # the threshold first: a missing one fails before any weights are loaded
        self.threshold, self.threshold_source, self.threshold_far = resolve_threshold(source, threshold, self.far)
        if normalization is None:
            normalization = source.normalization or PACKAGE_NORMALIZATION
        self.normalization = _check_normalization(normalization)
        self.embedder, self.image_size, self.embedding_dim = source.load()
        self.crop = _check_crop(crop if crop is not None else source.crop or _registry().ARCFACE_CROP)
        self._probe = None

    # -------------------------------------------------------------- pieces
    @property
    def detector(self):
        """The face detector (a ``MTCNNDetector`` created on first use unless one was given)."""
        if self._detector is None:
            from keras_facemargin.data.align import MTCNNDetector

            self._detector = MTCNNDetector()
        return self._detector

    def config(self) -> dict:
        """What determines the embeddings (recorded in galleries): model, input size, normalisation, ..."""
        return {"model": self.model_name, "embedding_dim": self.embedding_dim, "image_size": list(self.image_size),
                "normalization": _normalization_json(self.normalization), "flip": True,
                "align": f"5-point similarity to the {self.crop['kind']} {self.crop['size']}x{self.crop['size']} "
                         "template, resized", "crop": dict(self.crop)}

    def _detect(self, images):
        det = self.detector
        if hasattr(det, "detect_batch"):
            return det.detect_batch(images)
        return [det.detect(im) for im in images]

    def _choose(self, dets, shape, source):
        if not dets:
            raise NoFaceError("no_face", "no face detected", source)
        if len(dets) == 1:
            return 0
        if self.face_policy == "error":
            faces = [{"box": None if d.get("box") is None else [float(v) for v in d["box"]],
                      "confidence": None if d.get("confidence") is None else float(d["confidence"])} for d in dets]
            raise MultipleFacesError("multiple_faces", f"{len(dets)} faces detected and face_policy='error' "
                                     "(use 'central', 'largest' or 'best' to pick one)", source,
                                     num_faces=len(dets), faces=faces)
        if self.face_policy == "largest":
            return int(np.argmax([-1.0 if d.get("box") is None else float(d["box"][2]) * float(d["box"][3])
                                  for d in dets]))
        if self.face_policy == "best":
            return int(np.argmax([-np.inf if d.get("confidence") is None else d["confidence"] for d in dets]))
        return select_face(dets, shape)

    def _face(self, rgb, dets, source):
        return self._align(rgb, dets, self._choose(dets, rgb.shape, source), source)

    def _align(self, rgb, dets, k, source):
        """The aligned :class:`Face` of detection ``k`` (:class:`NoFaceError` if it cannot be aligned)."""
        d = dets[k]
        lm = np.asarray(d["landmarks"], np.float64).reshape(5, 2)
        size, template, weights = self.crop["size"], np.asarray(self.crop["template"], np.float64), self.crop["weights"]
        try:
            crop = align_face(rgb, lm, size, template=template, weights=weights)
            M = estimate_transform(lm, size, template=template, weights=weights)
        except ValueError as e:
            raise NoFaceError("no_face", f"face {k} cannot be aligned ({e})", source) from None
        crop = resize_image(crop, self.image_size)
        scale = np.array([self.image_size[1], self.image_size[0]], np.float64) / size
        box = tuple(float(v) for v in d["box"]) if d.get("box") is not None else None
        conf = d.get("confidence")
        return Face(source=source, box=box, confidence=None if conf is None else float(conf), landmarks=lm,
                    aligned_landmarks=transform_points(lm, M) * scale, crop=np.ascontiguousarray(crop),
                    num_faces=len(dets), index=k, image_shape=tuple(rgb.shape[:2]))

    def faces(self, images, names=None, errors: str = "raise") -> list:
        """Read, detect (one detector batch) and align one face per image, chosen by ``face_policy``.

        Args:
            images: a list of paths / RGB uint8 arrays.
            names: optional labels for results and errors.
            errors: ``"raise"`` (default): the first :class:`FaceVerifierError` is raised (read errors
                before any detection); ``"return"``: that image's entry is the exception instead.

        Returns:
            list of :class:`Face` (or :class:`FaceVerifierError` with ``errors="return"``).

        Example::

            face_a, face_b = verifier.faces(["a.jpg", "b.jpg"])
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"`errors` must be 'raise' or 'return', got {errors!r}.")
        names = [None] * len(images) if names is None else list(names)
        out = []
        for im, n in zip(images, names):
            try:
                out.append(_read_image(im, n))
            except ImageReadError as e:
                if errors == "raise":
                    raise
                out.append(e)
        todo = [i for i, r in enumerate(out) if isinstance(r, tuple)]
        dets = self._detect([out[i][0] for i in todo]) if todo else []
        for i, d in zip(todo, dets):
            rgb, label, digest = out[i]
            try:
                out[i] = self._face(rgb, d, label)
                out[i].file_sha256 = digest  # the bytes decoded: a gallery keys the photo without reading it again
            except (NoFaceError, MultipleFacesError) as e:
                if errors == "raise":
                    raise
                out[i] = e
        return out

    def embed_crops(self, crops) -> np.ndarray:
        """Flip-sum, L2-normalised float64 ``(N, d)`` embeddings of uint8 crops at the model's input size."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:3] != self.image_size or crops.dtype != np.uint8:
            raise ValueError(f"`crops` must be uint8 (N, {self.image_size[0]}, {self.image_size[1]}, 3), "
                             f"got {crops.dtype} {crops.shape}.")
        out = [embed_images(self.embedder, _normalize(crops[i:i + self.batch_size], self.normalization),
                            batch_size=self.batch_size, flip=True, normalize=False)
               for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(out, 0)

    def embed(self, image, name=None):
        """``(embedding, face)``: the float64 ``(d,)`` unit-norm embedding of the face in ``image``.

        Example::

            emb, face = verifier.embed("a.jpg")
        """
        face = self.faces([image], [name])[0]
        return self.embed_crops(face.crop[None])[0], face

    def embed_many(self, photos, names=None, batch_size: int = 32, progress: bool = True,
                   batch_detection: bool = True):
        """Embeddings of many photos, one per photo; a photo that fails is reported, never raised.

        See :func:`keras_facemargin.inference.batch.embed_many` (returns an ``EmbedManyResult``;
        ``batch_detection=False`` gives exactly :meth:`embed`'s embeddings, more slowly).

        Example::

            result = verifier.embed_many(paths)
            result.embeddings, result.sources, result.errors
        """
        from keras_facemargin.inference import batch

        return batch.embed_many(self, photos, names=names, batch_size=batch_size, progress=progress,
                                batch_detection=batch_detection)

    def detect_all(self, image, gallery=None, name=None, top_k: int = 5):
        """Every face of ``image`` (box, 5 landmarks, score, embedding), matched against ``gallery`` if given.

        See :func:`keras_facemargin.inference.batch.detect_all` (returns an ``AllFacesResult``).

        Raises:
            ImageReadError: ``image`` cannot be read. GalleryError: as :meth:`identify`.

        Example::

            for face in verifier.detect_all("group.jpg", gallery):
                print(face.box, face.identity, face.score)
        """
        from keras_facemargin.inference import batch

        rgb, label = read_image(image, name)
        return batch.detect_all(self, rgb, label, gallery=gallery, top_k=top_k)

    def probe_embedding(self) -> np.ndarray:
        """Embedding of a fixed synthetic image: a fingerprint of the model and preprocessing (galleries)."""
        if self._probe is None:
            h, w = self.image_size
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
            img = np.stack([np.sin(xx / 7.0 + yy / 13.0), np.cos(xx / 5.0 - yy / 9.0),
                            np.sin((xx + yy) / 11.0) * np.cos(yy / 4.0)], -1)
            img = np.round(127.5 + 127.0 * img).astype(np.uint8)
            self._probe = self.embed_crops(img[None])[0]
        return self._probe

    # ------------------------------------------------------------ verdicts
    def verify(self, img_a, img_b) -> VerifyResult:
        """Are the faces of two photos the same person?

        Args:
            img_a, img_b: paths or RGB uint8 arrays.

        Returns:
            :class:`VerifyResult` (``score``, ``is_same = score > threshold``, ``faces``, ...).

        Raises:
            ImageReadError, NoFaceError, MultipleFacesError: naming the image concerned.

        Example::

            r = verifier.verify("a.jpg", "b.jpg")
            json.dumps(r.to_dict())
        """
        fa, fb = self.faces([img_a, img_b])
        ea, eb = self.embed_crops(np.stack([fa.crop, fb.crop]))
        score = float(pair_scores(ea[None], eb[None])[0])
        return VerifyResult(score=score, is_same=score > self.threshold, threshold=self.threshold,
                            far=self.threshold_far, threshold_source=self.threshold_source,
                            model=self.model_name, faces=(fa, fb))

    def identify(self, img, gallery, top_k: int = 5, threshold=None) -> IdentifyResult:
        """Who in ``gallery`` is the face of ``img``?

        Args:
            img: a path or an RGB uint8 array.
            gallery: a :class:`keras_facemargin.inference.gallery.Gallery` built with this verifier's model
                (checked with its ``check_compatible``).
            top_k: how many candidates to return.
            threshold: override of the verifier's threshold for this call.

        Returns:
            :class:`IdentifyResult`: ``identity`` is the best candidate if its score ``> threshold``,
            else ``"unknown"``.

        Raises:
            GalleryError: the gallery was built with another model / preprocessing, or is empty.
            ImageReadError, NoFaceError, MultipleFacesError: as :meth:`verify`.

        Example::

            r = verifier.identify("query.jpg", Gallery.load("people.npz"))
            r.identity, r.candidates[:3]
        """
        if not callable(getattr(gallery, "check_compatible", None)):
            raise TypeError(f"`gallery` must be a keras_facemargin.inference.gallery.Gallery, got {type(gallery).__name__}.")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
            raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
        gallery.check_compatible(self)
        if len(gallery) == 0:
            raise GalleryError("gallery_empty", "the gallery holds no identity", gallery.path)
        thr = self.threshold if threshold is None else float(threshold)
        emb, face = self.embed(img)
        cands = gallery.search(emb, top_k=int(top_k))[0]  # exact, chunked (inference.gallery_search)
        best = cands[0]
        known = best["score"] > thr
        return IdentifyResult(identity=best["identity"] if known else "unknown", is_known=known,
                              score=best["score"], threshold=thr,
                              far=self.threshold_far if threshold is None else None,
                              threshold_source=self.threshold_source if threshold is None else "explicit",
                              model=self.model_name, candidates=cands, face=face)


# -------------------------------------------------------------- calibration
def calibrate_thresholds(model_or_embed_fn, lfw_root, fars=(1e-2, 1e-3), align="mtcnn", image_size=None,
                         normalization=None, batch_size: int = 64, detector=None, cache_dir=None,
                         progress: bool = True) -> dict:
    """Cosine thresholds at stated FARs on the 6000 LFW View 2 pairs (MTCNN-aligned, flip-sum).

    For reporting and comparison only: LFW is the test set, so registry thresholds are calibrated on
    held-out CelebA identities instead (:func:`keras_facemargin.inference.calibrate.calibrate_verifier`).

    The images go through :class:`FaceVerifier`'s preprocessing: ``load_lfw_images(align=align,
    image_size=112)`` (cached for ``"mtcnn"``; several faces -> the large-and-central one, no face ->
    the centre crop, counted in ``no_face_images``), resized to ``image_size``, normalised, embedded
    with the flip sum. For each FAR the threshold is the package's floor rule over **all** impostor
    pairs (:func:`keras_facemargin.evaluation.tar_at_far`): the smallest ``t`` with
    ``#{impostor > t} / #impostor <= far``; FARs below ``1 / #impostor`` (1/3000) are not resolvable
    and give the highest impostor score.

    Args:
        model_or_embed_fn: a registry name (loaded; its ``normalization`` / ``input_size`` are the
            defaults), a :class:`FaceVerifier` (its model, normalisation, input size), a Keras model,
            or a callable on normalised float32 batches.
        lfw_root: folder with ``pairs.txt`` and ``images/``.
        fars: target false accept rates.
        align: ``"mtcnn"`` (as ``FaceVerifier``) or ``"center"``.
        image_size: model input side (default: from the model, else 112).
        normalization: ``{"mean", "std"}`` or callable (default: the verifier's / registry's / package's).
        batch_size, detector, cache_dir, progress: see :func:`keras_facemargin.data.lfw.load_lfw_images`.

    Returns:
        dict: ``thresholds`` ``{far_key(far): threshold}`` (the registry field), ``tar`` and ``far``
        ``{far_key: achieved rate}`` (rule ``score > threshold``), ``accuracy`` / ``accuracy_std`` (10-fold),
        ``num_pairs``, ``num_genuine``, ``num_impostor``, ``no_face_images``, ``align``, ``flip``,
        ``image_size``, ``normalization``, ``rule``.

    Example::

        cal = calibrate_thresholds("my_model", "../shared/data/lfw")
        cal["thresholds"]   # {"0.01": 0.23, "0.001": 0.31}  -> registry entry "thresholds"
    """
    import keras

    from keras_facemargin.data.lfw import load_lfw_images, load_lfw_pairs
    from keras_facemargin.export.savedmodel import as_embedder

    fars = [_check_far(f) for f in fars]
    if not fars:
        raise ValueError("`fars` is empty.")
    fn, size, norm = model_or_embed_fn, None, None
    if isinstance(fn, str):
        registry = _registry()
        info = registry.get_model_info(fn)
        norm = info.get("normalization")
        fn = _load_by_name(fn.lower(), None)
    if isinstance(fn, FaceVerifier):
        size, norm, fn = fn.image_size, fn.normalization, fn.embedder
    elif isinstance(fn, keras.Model):
        fn = as_embedder(fn)
    elif not callable(fn):
        raise TypeError(f"`model_or_embed_fn` must be a name, FaceVerifier, Keras model or callable, "
                        f"got {type(fn).__name__}.")
    if image_size is not None:
        size = (int(image_size), int(image_size)) if np.ndim(image_size) == 0 else tuple(int(v) for v in image_size)
    if size is None:
        shape = getattr(fn, "input_shape", None)
        size = (int(shape[1]), int(shape[2])) if shape and shape[1] and shape[2] else (ALIGN_SIZE, ALIGN_SIZE)
    if normalization is not None:
        norm = normalization
    norm = _check_normalization(norm if norm is not None else PACKAGE_NORMALIZATION)
    pairs = load_lfw_pairs(lfw_root)
    paths, ia, ib = pairs.unique_paths()
    images, info = load_lfw_images(paths, image_size=ALIGN_SIZE, align=align, cache_dir=cache_dir,
                                   detector=detector, progress=progress, return_info=True)
    if size != (ALIGN_SIZE, ALIGN_SIZE):
        images = np.stack([resize_image(im, size) for im in images])
    emb = np.concatenate([embed_images(fn, _normalize(images[i:i + 1024], norm), batch_size=batch_size,
                                       flip=True, normalize=False) for i in range(0, len(images), 1024)])
    scores = pair_scores(emb[ia], emb[ib])
    same = pairs.is_same
    res = kfold_verification(scores, same, folds=pairs.fold, far_targets=fars)
    genuine, impostor = scores[same], scores[~same]
    out = {"thresholds": {}, "tar": {}, "far": {}}
    for f in fars:
        t = res.far_thresholds[f]
        k = far_key(f)
        out["thresholds"][k] = float(t)
        out["tar"][k] = float(np.mean(genuine > t))
        out["far"][k] = float(np.mean(impostor > t))
        if f * impostor.size < 1:
            logger.warning("FAR %s is below 1/%d impostor pairs: threshold = the highest impostor score.",
                           k, impostor.size)
    out.update({"accuracy": res.accuracy_mean, "accuracy_std": res.accuracy_std, "num_pairs": int(scores.size),
                "num_genuine": int(genuine.size), "num_impostor": int(impostor.size),
                "no_face_images": len(info["no_face"]), "align": align, "flip": True, "image_size": list(size),
                "normalization": _normalization_json(norm), "rule": "same iff cosine > threshold"})
    return out
