"""Face galleries for 1:N identification: one template per identity, saved without pickle.

A :class:`Gallery` is built once from ``folder/<identity>/<images>`` with a
:class:`~keras_facemargin.inference.verifier.FaceVerifier` (each identity's template is the mean of its
images' L2-normalised flip-sum embeddings, re-normalised), saved as an ``.npz`` of plain arrays
(read back with ``allow_pickle=False``) with JSON metadata: the verifier's ``config()`` (model name,
embedding size, input size, normalisation) and the embedding of a fixed probe image, so that a gallery
used with another model or preprocessing raises
:class:`~keras_facemargin.inference.verifier.GalleryError` (``reason="gallery_mismatch"``) instead of
returning meaningless scores. Identification itself is
:meth:`~keras_facemargin.inference.verifier.FaceVerifier.identify`.

Example::

    from keras_facemargin.inference.gallery import Gallery
    gallery = Gallery.build(verifier, "people/")    # people/alice/1.jpg, people/bob/x.png, ...
    gallery.save("people.npz")
    gallery = Gallery.load("people.npz", verifier)  # raises GalleryError for another model
    verifier.identify("query.jpg", gallery).identity
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

import numpy as np

from keras_facemargin.inference.verifier import FaceVerifier, FaceVerifierError, GalleryError

__all__ = ["Gallery", "GALLERY_FORMAT", "GALLERY_VERSION"]

logger = logging.getLogger(__name__)

GALLERY_FORMAT = "keras_facemargin.gallery"
GALLERY_VERSION = 1
_PROBE_MIN_COSINE = 0.999  # same model => the probe embeddings agree to float noise


def _list_gallery_files(root: Path):
    idents, stray = {}, []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files = sorted(str(p) for p in entry.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(entry).parts))
            idents[entry.name] = files
        else:
            stray.append(str(entry))
    return idents, stray


class Gallery:
    """Identity templates: per identity, the mean of its images' normalised embeddings, re-normalised.

    Built once from ``folder/<identity>/<images>`` with :meth:`build`, saved with :meth:`save` as an
    ``.npz`` of plain arrays (loaded with ``allow_pickle=False``) plus JSON metadata recording the
    verifier's :meth:`FaceVerifier.config` and a fingerprint embedding, so that using it with another
    model or preprocessing raises :class:`GalleryError`.

    Attributes:
        identities: list of names (sorted).
        embeddings: float32 ``(n, d)`` unit-norm templates.
        counts: int ``(n,)`` images used per identity.
        config: the building verifier's ``config()``.
        probe: float32 ``(d,)`` the building verifier's ``probe_embedding()``.
        skipped: ``[{"path", "reason", "message"}]`` files (or identities) not used.
        path: the file it was loaded from / saved to, if any.

    Example::

        gallery = Gallery.build(verifier, "people/")
        gallery.save("people.npz")
        gallery = Gallery.load("people.npz")
        verifier.identify("query.jpg", gallery)
    """

    def __init__(self, identities, embeddings, counts, config, probe, skipped=(), source=None, path=None,
                 created=None):
        self.identities = [str(i) for i in identities]
        self.embeddings = np.asarray(embeddings, np.float32).reshape(len(self.identities), -1)
        self.counts = np.asarray(counts, np.int64).reshape(-1)
        if self.counts.shape[0] != len(self.identities):
            raise ValueError(f"{len(self.identities)} identities but {self.counts.shape[0]} counts.")
        self.config = dict(config)
        self.probe = np.asarray(probe, np.float32).reshape(-1)
        self.skipped = list(skipped)
        self.source = source
        self.path = None if path is None else str(path)
        self.created = created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def __len__(self):
        return len(self.identities)

    def __repr__(self):
        return (f"Gallery({len(self)} identities, {int(self.counts.sum())} images, model={self.config.get('model')!r}, "
                f"skipped={len(self.skipped)})")

    @classmethod
    def build(cls, verifier: FaceVerifier, folder, on_error: str = "skip", progress: bool = False,
              chunk_size: int = 16) -> "Gallery":
        """Embed every image of ``folder/<identity>/...`` and average per identity.

        Args:
            verifier: the :class:`FaceVerifier` (model, detector, ``face_policy``).
            folder: root with one sub-folder per identity (images anywhere below it; hidden files ignored).
            on_error: ``"skip"`` (default): files that fail (not an image, unreadable, no face, several faces
                with ``face_policy="error"``), files outside identity folders and identities left without
                images are listed in ``skipped`` and logged; ``"raise"``: the first failure is raised.
            progress: tqdm progress bar.
            chunk_size: images read and detected together.

        Returns:
            :class:`Gallery`.

        Raises:
            FileNotFoundError: ``folder`` is not a directory.
            GalleryError: no identity with a usable image.

        Example::

            g = Gallery.build(verifier, "people/")   # people/alice/1.jpg, people/bob/x.png, ...
            g.identities, g.counts, g.skipped
        """
        from tqdm.auto import tqdm

        if on_error not in ("skip", "raise"):
            raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"Gallery folder not found: {root} (expected <folder>/<identity>/<images>).")
        idents, stray = _list_gallery_files(root)
        skipped = []

        def _skip(path, reason, message):
            if on_error == "raise":
                raise GalleryError(reason, message, path)
            skipped.append({"path": str(path), "reason": reason, "message": message})
            logger.warning("Gallery %s: skipping %s (%s: %s)", root, path, reason, message)

        for p in stray:
            _skip(p, "not_in_identity_folder", "file directly under the gallery root (expected <identity>/<images>)")
        jobs = [(name, p) for name in idents for p in idents[name]]
        embs = {name: [] for name in idents}
        with tqdm(total=len(jobs), desc="gallery", unit="img", disable=not progress) as bar:
            for start in range(0, len(jobs), max(1, int(chunk_size))):
                chunk = jobs[start:start + max(1, int(chunk_size))]
                crops, owners = [], []
                for (name, _), face in zip(chunk, verifier.faces([p for _, p in chunk], errors="return")):
                    if isinstance(face, FaceVerifierError):
                        if on_error == "raise":
                            raise face
                        _skip(face.file, face.reason, face.detail)
                    else:
                        crops.append(face.crop)
                        owners.append(name)
                if crops:
                    for name, e in zip(owners, verifier.embed_crops(np.stack(crops))):
                        embs[name].append(e)
                bar.update(len(chunk))
        names = []
        for name in idents:
            if embs[name]:
                names.append(name)
            else:
                _skip(str(root / name), "no_usable_image", f"identity {name!r} has no usable image")
        if not names:
            raise GalleryError("gallery_empty", "no identity with a usable image (expected <folder>/<identity>/"
                               f"<images>; {len(skipped)} file(s) skipped)", root)
        templates = np.stack([np.mean(embs[n], axis=0) for n in names])
        templates /= np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
        return cls(names, templates, [len(embs[n]) for n in names], verifier.config(), verifier.probe_embedding(),
                   skipped=skipped, source=str(root))

    def metadata(self) -> dict:
        """The JSON metadata stored with :meth:`save`."""
        return {"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "config": self.config, "created": self.created,
                "source": self.source, "num_identities": len(self), "skipped": self.skipped}

    def save(self, path) -> Path:
        """Write ``path`` (an ``.npz``: ``embeddings``, ``counts``, ``identities``, ``probe``, ``metadata`` JSON).

        Example::

            gallery.save("people.npz")
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        arrays = {"embeddings": self.embeddings.astype(np.float32), "counts": self.counts.astype(np.int64),
                  "identities": np.array(self.identities, dtype=str).reshape(-1),
                  "probe": self.probe.astype(np.float32),
                  "metadata": np.array(json.dumps(self.metadata(), sort_keys=True))}
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path, verifier: FaceVerifier = None) -> "Gallery":
        """Read a gallery written by :meth:`save` (no pickle); with ``verifier``, also check compatibility.

        Raises:
            FileNotFoundError: no such file.
            GalleryError: ``gallery_format`` (not a gallery / damaged / newer version) or
                ``gallery_mismatch`` (with ``verifier``).

        Example::

            gallery = Gallery.load("people.npz", verifier)
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Gallery file not found: {path}")
        needed = ("embeddings", "counts", "identities", "probe", "metadata")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in needed if k not in z.files]
                if missing:
                    raise GalleryError("gallery_format", f"not a keras_facemargin gallery (missing {missing})", path)
                arrays = {k: z[k] for k in needed}
            meta = json.loads(str(arrays["metadata"]))
        except GalleryError:
            raise
        except Exception as e:  # zipfile / numpy / json errors: not a gallery, or a damaged one
            raise GalleryError("gallery_format", f"not a readable gallery .npz ({type(e).__name__}: {e})", path) from None
        if not isinstance(meta, dict) or meta.get("format") != GALLERY_FORMAT:
            raise GalleryError("gallery_format", f"not a keras_facemargin gallery (format {meta.get('format')!r})"
                               if isinstance(meta, dict) else "metadata is not a JSON object", path)
        if meta.get("version") != GALLERY_VERSION:
            raise GalleryError("gallery_format", f"gallery format version {meta.get('version')!r}, this package "
                               f"reads version {GALLERY_VERSION}", path)
        emb = arrays["embeddings"]
        if emb.ndim != 2 or emb.shape[0] != arrays["identities"].shape[0] or not np.all(np.isfinite(emb)):
            raise GalleryError("gallery_format", f"inconsistent arrays (embeddings {emb.shape}, "
                               f"identities {arrays['identities'].shape})", path)
        g = cls(arrays["identities"].tolist(), emb, arrays["counts"], meta["config"], arrays["probe"],
                skipped=meta.get("skipped", []), source=meta.get("source"), path=path, created=meta.get("created"))
        if verifier is not None:
            g.check_compatible(verifier)
        return g

    def check_compatible(self, verifier: FaceVerifier) -> None:
        """Raise :class:`GalleryError` (``gallery_mismatch``) unless ``verifier`` embeds as the builder did.

        Compared: embedding size, input size, normalisation, and the embedding of a fixed probe image
        (cosine >= 0.999: catches other weights under the same name). The model name alone may differ
        (e.g. a registry name and the path of the same file).
        """
        mine, theirs = self.config, verifier.config()
        where = self.path or self.source
        for key in ("embedding_dim", "image_size", "normalization", "flip"):
            if mine.get(key) != theirs.get(key):
                raise GalleryError("gallery_mismatch", f"gallery built with model {mine.get('model')!r} "
                                   f"({key}={mine.get(key)!r}); this verifier's model {theirs['model']!r} has "
                                   f"{key}={theirs.get(key)!r}. Rebuild the gallery with this model.", where)
        probe = verifier.probe_embedding()
        cos = float(np.dot(self.probe.astype(np.float64), probe)
                    / max(np.linalg.norm(self.probe) * np.linalg.norm(probe), 1e-12))
        if cos < _PROBE_MIN_COSINE:
            raise GalleryError("gallery_mismatch", f"gallery built with model {mine.get('model')!r}; this verifier's "
                               f"model {theirs['model']!r} embeds the probe image differently (cosine {cos:.4f} < "
                               f"{_PROBE_MIN_COSINE}): other weights. Rebuild the gallery with this model.", where)
