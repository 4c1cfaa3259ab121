"""Many photos, or every face of a photo: the batch side of :class:`~keras_facemargin.FaceVerifier`.

* :func:`embed_many` (``FaceVerifier.embed_many``): one embedding per photo, for many photos, with
  one model load. Photos are read, detected (one detector call per chunk: the MTCNN detector batches
  equal-sized photos; ``batch_detection=False`` for one call per photo) and aligned chunk by chunk, and
  the crops are embedded in batches (flip sum, L2-normalised: ``FaceVerifier.embed``'s preprocessing). A photo
  that fails (unreadable, no face, several faces with ``face_policy="error"``) gets its typed
  :class:`~keras_facemargin.errors.FaceVerifierError` in the result; the run goes on.
* :func:`detect_all` (``FaceVerifier.detect_all``): every face of one photo with its box, 5 landmarks,
  detector score and embedding, and optionally its best match in a gallery.

The functions take the verifier as their first argument and use its own pieces (``faces``,
``_detect``, ``_align``, ``embed_crops``), so the preprocessing is the verifier's.

Example::

    verifier = kfm.FaceVerifier()
    result = verifier.embed_many(["a.jpg", "b.jpg", "broken.jpg"])
    result.embeddings.shape, [e.reason for e in result.errors]
    faces = verifier.detect_all("group.jpg", gallery=Gallery.load("people.npz"))
    [(f.box, f.identity, f.score) for f in faces]
"""

from __future__ import annotations

import logging
import time

import numpy as np

from keras_facemargin.errors import FaceVerifierError, GalleryError, ImageReadError, NoFaceError
from keras_facemargin.inference.results import AllFacesResult, DetectedFace, EmbedManyResult, PhotoEmbedding

__all__ = ["embed_many", "detect_all", "gallery_matches"]

logger = logging.getLogger(__name__)


def _faces_one_by_one(verifier, photos, names):
    """``verifier.faces(errors="return")`` photo by photo; an exception of one photo becomes its error."""
    out = []
    for photo, name in zip(photos, names):
        label = str(photo) if name is None and not isinstance(photo, np.ndarray) else (name or "<array>")
        try:
            out.append(verifier.faces([photo], [name], errors="return")[0])
        except (TypeError, ValueError) as e:  # not a path nor an RGB uint8 array
            out.append(ImageReadError("not_an_image", str(e), label))
        except Exception as e:  # noqa: BLE001  (the detector failed on this photo: report it, go on)
            out.append(FaceVerifierError("detection_failed", f"{type(e).__name__}: {e}", label))
    return out


def embed_many(verifier, photos, names=None, batch_size: int = 32, progress: bool = True,
               batch_detection: bool = True) -> EmbedManyResult:
    """One embedding per photo, for many photos; a photo that fails is reported, never raised.

    Args:
        verifier: a :class:`~keras_facemargin.FaceVerifier` (its model, detector, ``face_policy``).
        photos: paths and / or RGB uint8 arrays.
        names: optional labels (default: the path, ``"<array>"`` for arrays).
        batch_size: photos read, detected and aligned together (the crops are embedded in batches of
            the verifier's ``batch_size``).
        progress: show a tqdm progress bar (on stderr).
        batch_detection: ``True`` (default): the photos of a chunk go to the detector together (on
            CPU about 5x faster detection than one photo at a time). MTCNN rounds boxes and landmarks to
            whole pixels, and its float noise depends on the batch's shape, so about one photo in 20
            gets a landmark one pixel off the one ``FaceVerifier.embed`` finds (embedding cosine to
            ``embed``'s about 0.998 for that photo, 1 for the others). ``False``: the detector sees one
            photo at a time, as in ``embed``, and every embedding equals ``embed``'s to float noise
            (only the crops are embedded in batches).

    Returns:
        :class:`~keras_facemargin.inference.results.EmbedManyResult`: per photo, in input order, a
        :class:`~keras_facemargin.inference.results.PhotoEmbedding` with the float64 ``(d,)``
        unit-norm ``embedding`` and its ``face``, or the photo's ``error``.

    Example::

        result = embed_many(verifier, ["a.jpg", "b.jpg"], batch_size=16)
        for item in result:
            print(item.source, item.error.reason if item.error else item.embedding[:3])
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    photos = list(photos)
    names = [None] * len(photos) if names is None else list(names)
    if len(names) != len(photos):
        raise ValueError(f"{len(names)} names for {len(photos)} photos.")
    items, start_time = [], time.perf_counter()
    with tqdm(total=len(photos), desc="embed", unit="photo", disable=not progress or len(photos) <= 1) as bar:
        for start in range(0, len(photos), int(batch_size)):
            part, part_names = photos[start:start + batch_size], names[start:start + batch_size]
            try:
                faces = verifier.faces(part, part_names, errors="return") if batch_detection else None
            except Exception:  # noqa: BLE001  (a bad input or a detector failure: find the photo)
                faces = None
            if faces is None:
                faces = _faces_one_by_one(verifier, part, part_names)
            good = [i for i, f in enumerate(faces) if not isinstance(f, FaceVerifierError)]
            embeddings = verifier.embed_crops(np.stack([faces[i].crop for i in good])) if good else []
            found = dict(zip(good, embeddings))
            for i, face in enumerate(faces):
                if i in found:
                    items.append(PhotoEmbedding(source=face.source, embedding=found[i], face=face))
                else:
                    items.append(PhotoEmbedding(source=face.file, error=face))
            bar.update(len(part))
    return EmbedManyResult(items=items, model=verifier.model_name, seconds=time.perf_counter() - start_time)


def gallery_matches(verifier, gallery, embeddings, top_k: int = 5, threshold=None) -> list:
    """For each embedding, the ``top_k`` gallery candidates and the verdict (the rule of ``identify``).

    Args:
        verifier: the :class:`~keras_facemargin.FaceVerifier` that made the embeddings.
        gallery: a :class:`keras_facemargin.inference.gallery.Gallery` built with that verifier's model.
        embeddings: float ``(n, d)`` unit-norm embeddings.
        top_k: candidates kept per embedding.
        threshold: override of the verifier's threshold.

    Returns:
        per embedding ``{"identity", "is_known", "score", "threshold", "candidates"}``: ``identity``
        is the best candidate if its score ``> threshold``, else ``"unknown"``.

    Raises:
        GalleryError: the gallery was built with another model / preprocessing, or is empty.

    Example::

        gallery_matches(verifier, gallery, result.embeddings)[0]["identity"]
    """
    if not callable(getattr(gallery, "check_compatible", None)):
        raise TypeError("`gallery` must be a keras_facemargin.inference.gallery.Gallery, got "
                        f"{type(gallery).__name__}.")
    gallery.check_compatible(verifier)
    if len(gallery) == 0:
        raise GalleryError("gallery_empty", "the gallery holds no identity", gallery.path)
    thr = verifier.threshold if threshold is None else float(threshold)
    embeddings = np.asarray(embeddings, np.float64).reshape(-1, verifier.embedding_dim)
    out = []
    for cands in (gallery.search(embeddings, top_k=int(top_k)) if len(embeddings) else []):  # exact, chunked
        known = cands[0]["score"] > thr
        out.append({"identity": cands[0]["identity"] if known else "unknown", "is_known": bool(known),
                    "score": cands[0]["score"], "threshold": thr, "candidates": cands})
    return out


def detect_all(verifier, rgb, source, gallery=None, top_k: int = 5) -> AllFacesResult:
    """Every face of one decoded photo, embedded, optionally matched against a gallery.

    Args:
        verifier: a :class:`~keras_facemargin.FaceVerifier`.
        rgb: RGB uint8 ``(H, W, 3)`` photo (``FaceVerifier.detect_all`` reads paths).
        source: the photo's label for the results.
        gallery: optional :class:`keras_facemargin.inference.gallery.Gallery`: each face gets its best
            match (``identity`` or ``"unknown"`` by the verifier's threshold, and the ``score``).
        top_k: candidates kept per face with a gallery.

    Returns:
        :class:`~keras_facemargin.inference.results.AllFacesResult`: its ``faces`` are
        :class:`~keras_facemargin.inference.results.DetectedFace` in detector order (a face whose
        landmarks cannot be aligned is left out, with a warning); none when no face is found.

    Example::

        result = detect_all(verifier, rgb, "group.jpg")
        [(f.box, f.confidence, f.landmarks) for f in result]
    """
    dets = verifier._detect([rgb])[0]
    faces = []
    for k in range(len(dets)):
        try:
            faces.append(verifier._align(rgb, dets, k, source))
        except NoFaceError as e:
            logger.warning("%s: face %d skipped: %s", source, k, e.detail)
    embeddings = verifier.embed_crops(np.stack([f.crop for f in faces])) if faces else np.zeros(
        (0, verifier.embedding_dim))
    matches = gallery_matches(verifier, gallery, embeddings, top_k) if gallery is not None else None
    out = []
    for i, face in enumerate(faces):
        match = matches[i] if matches is not None else {}
        out.append(DetectedFace(**{k: getattr(face, k) for k in face.__dataclass_fields__}, embedding=embeddings[i],
                                identity=match.get("identity"), is_known=match.get("is_known"),
                                score=match.get("score"), candidates=match.get("candidates", [])))
    return AllFacesResult(source=source, image_shape=tuple(rgb.shape[:2]), faces=out, model=verifier.model_name,
                          threshold=verifier.threshold if gallery is not None else None)
