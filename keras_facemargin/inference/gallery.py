"""Face galleries for 1:N identification, kept in a transactional SQLite file.

A :class:`Gallery` holds one unit-norm template per identity: the renormalised mean of the unit
embeddings of its photos. It is stored as one SQLite file (:mod:`keras_facemargin.inference.gallery_store`:
WAL mode, one transaction per change, the model's configuration and fingerprint recorded), to which
photos and identities are added and removed incrementally (:func:`add_photos`,
:func:`remove_from_gallery`; ``kfm gallery add|remove|list``) by any number of threads and processes
at once. A gallery used with another model or preprocessing raises
:class:`~keras_facemargin.errors.GalleryError` (``reason="gallery_mismatch"``) instead of returning
meaningless scores. Search is exact (:meth:`Gallery.search`: a chunked matmul,
:mod:`~keras_facemargin.inference.gallery_search`); identification is
:meth:`~keras_facemargin.inference.verifier.FaceVerifier.identify`.

:meth:`Gallery.load` reads a SQLite gallery, or a legacy ``.npz`` gallery of earlier versions
(read-only: :meth:`Gallery.save` or ``kfm gallery import`` converts it). Both are validated on load
(:mod:`~keras_facemargin.inference.gallery_files`). ``GalleryError.reason``: ``gallery_format``
(not a gallery, damaged or inconsistent), ``gallery_limit`` (a legacy member over a size or ratio
limit), ``not_a_file`` (a directory, FIFO or device), ``legacy_gallery`` (a change asked of an
``.npz``), ``gallery_mismatch``, ``gallery_empty``, ``unknown_identity``, ``write_failed`` (a full disk
or an I/O error during a change: rolled back, the file as it was), ``gallery_busy`` (another writer
held the file past the busy timeout).

Example::

    from keras_facemargin.inference.gallery import Gallery, add_photos
    gallery = Gallery.build(verifier, "people/")    # people/alice/1.jpg, people/bob/x.png, ...
    gallery.save("people.db")
    add_photos("people.db", verifier, "carol", ["carol1.jpg", "carol2.jpg"])
    gallery = Gallery.load("people.db", verifier)   # raises GalleryError for another model
    verifier.identify("query.jpg", gallery).identity
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from keras_facemargin.errors import FaceVerifierError, GalleryError, ImageReadError
from keras_facemargin.inference.gallery_files import (
    check_config, check_identity_name, check_probe, check_regular_file, check_templates, gallery_kind,
    read_legacy_npz)
from keras_facemargin.inference.gallery_search import DEFAULT_SCORE_BUDGET, top_k_search
from keras_facemargin.inference.gallery_store import GALLERY_FORMAT, STORE_VERSION, GalleryStore
from keras_facemargin.utils.folder_files import display_path, read_regular_file
from keras_facemargin.utils.images import PHOTO_MAX_BYTES
from keras_facemargin.utils.untrusted import plain_text

__all__ = ["Gallery", "add_photos", "add_embeddings", "remove_from_gallery", "check_writable", "photo_key",
           "GALLERY_FORMAT", "GALLERY_VERSION"]

logger = logging.getLogger(__name__)

GALLERY_VERSION = STORE_VERSION
_LEGACY_VERSION = 1
_PROBE_MIN_COSINE = 0.999  # same model => the probe embeddings agree to float noise


def _list_gallery_files(root: Path, follow_links=False):
    """``(identities, stray, refused)``: ``{name: sorted file paths}`` (hidden entries skipped), the
    files directly under ``root``, and ``(path, reason, detail)`` of the entries never opened: FIFOs,
    sockets, devices, dangling or looping links, links to folders and links out of ``root``."""
    from keras_facemargin.utils.folder_files import classify_entry, list_tree

    idents, stray, refused = {}, [], []
    root_real = os.path.realpath(root)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        kind, info = classify_entry(entry, root_real)
        if kind == "dir":
            files, bad = list_tree(entry, follow_links=follow_links)
            idents[entry.name] = sorted(str(entry / rel) for rel in files)
            refused += [(str(entry / r.path), r.reason, r.detail) for r in bad]
        elif kind == "file":
            stray.append(str(entry))
        else:
            refused.append((str(entry), kind, info))
    return idents, stray, refused


def photo_key(photo) -> str:
    """The key of a photo in a gallery: the sha256 of its file's bytes (or of an array's shape and bytes).

    Reads the file. The add paths (:meth:`Gallery.build`, :func:`add_photos`, :func:`add_embeddings`
    given the photo's face) take the same ``'sha256:<hex>'`` key from the bytes the photo decoder read
    instead (:func:`keras_facemargin.utils.images.read_photo_with_sha256`), so each photo is read once.

    Example::

        photo_key("alice1.jpg")      # 'sha256:9f8...'
    """
    h = hashlib.sha256()
    if isinstance(photo, np.ndarray):
        h.update(repr((photo.shape, str(photo.dtype))).encode())
        h.update(np.ascontiguousarray(photo).tobytes())
    else:  # the bounded, non-blocking reader: a file swapped for a FIFO after its decode cannot block
        data, problem = read_regular_file(photo, PHOTO_MAX_BYTES)
        if problem is not None:
            raise ImageReadError("not_an_image" if problem[0] == "not_a_file" else problem[0], problem[1], str(photo))
        h.update(data)
    return "sha256:" + h.hexdigest()


def _decoded_photo_key(photo, face=None) -> str:
    """:func:`photo_key` of ``photo``, taken from the sha256 of the bytes ``face`` was decoded from when it
    carries one (:attr:`Face.file_sha256 <keras_facemargin.inference.results.Face>`): the file is not read
    again, and the key is that of the content embedded. Falls back to :func:`photo_key` (arrays, or a
    face without the digest)."""
    digest = getattr(face, "file_sha256", None)
    if digest is not None and not isinstance(photo, np.ndarray):
        return "sha256:" + digest
    return photo_key(photo)


def _photo_source(photo) -> str:
    return "<array>" if isinstance(photo, np.ndarray) else os.path.abspath(str(photo))


def _compare(config, probe, verifier, where) -> None:
    """Raise ``gallery_mismatch`` unless ``verifier`` embeds as the gallery's builder did."""
    theirs = verifier.config()
    for key in ("embedding_dim", "image_size", "normalization", "flip"):
        if config.get(key) != theirs.get(key):
            raise GalleryError("gallery_mismatch", f"gallery built with model {config.get('model')!r} "
                               f"({key}={config.get(key)!r}); this verifier's model {theirs['model']!r} has "
                               f"{key}={theirs.get(key)!r}. Rebuild the gallery with this model.", where)
    mine = np.asarray(probe, np.float64)
    other = np.asarray(verifier.probe_embedding(), np.float64)
    cos = float(np.dot(mine, other) / max(np.linalg.norm(mine) * np.linalg.norm(other), 1e-12))
    if not cos >= _PROBE_MIN_COSINE:  # NaN fails too
        raise GalleryError("gallery_mismatch", f"gallery built with model {config.get('model')!r}; this verifier's "
                           f"model {theirs['model']!r} embeds the probe image differently (cosine {cos:.4f} < "
                           f"{_PROBE_MIN_COSINE}): other weights. Rebuild the gallery with this model.", where)


class Gallery:
    """Identity templates: per identity, the renormalised mean of its photos' unit embeddings.

    Built with :meth:`build` from ``folder/<identity>/<images>``, read with :meth:`load`, written
    with :meth:`save` (a SQLite file: :mod:`~keras_facemargin.inference.gallery_store`); a file is
    changed in place with :func:`add_photos` / :func:`remove_from_gallery`. A loaded gallery is a
    snapshot: reload it to see later changes.

    Attributes:
        identities: list of names (sorted).
        embeddings: float32 ``(n, d)`` unit-norm templates.
        counts: int ``(n,)`` images per identity.
        config: the building verifier's ``config()``.
        probe: float32 ``(d,)`` the building verifier's ``probe_embedding()`` (the model's fingerprint).
        skipped: ``[{"path", "reason", "message"}]`` files (or identities) not used by :meth:`build`.
        path: the file it was loaded from / saved to, if any.
        format: ``"sqlite"``, ``"npz"`` (a legacy file, read-only) or ``None`` (in memory).
        photos: ``{identity: [(key, source, weight, embedding)]}`` for a gallery built in memory
            (saved per photo), else ``None`` (saved as one row per identity, weighted by its count).

    Example::

        gallery = Gallery.build(verifier, "people/")
        gallery.save("people.db")
        gallery = Gallery.load("people.db")
        verifier.identify("query.jpg", gallery)
        gallery.search(embeddings, top_k=3)
    """

    def __init__(self, identities, embeddings, counts, config, probe, skipped=(), source=None, path=None,
                 created=None, photos=None):
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
        self.photos = photos
        self.format = None

    def __len__(self):
        return len(self.identities)

    def __repr__(self):
        return (f"Gallery({len(self)} identities, {int(self.counts.sum())} images, model={self.config.get('model')!r}, "
                f"skipped={len(self.skipped)})")

    @classmethod
    def build(cls, verifier, folder, on_error: str = "skip", progress: bool = False,
              chunk_size: int = 16, follow_links: bool = False) -> "Gallery":
        """Embed every image of ``folder/<identity>/...`` and average per identity.

        Args:
            verifier: the :class:`FaceVerifier` (model, detector, ``face_policy``).
            folder: root with one sub-folder per identity (images anywhere below it; hidden files ignored).
            on_error: ``"skip"`` (default): files that fail (not an image, unreadable, no face, several faces
                with ``face_policy="error"``), files outside identity folders and identities left without
                images are listed in ``skipped`` and logged; entries that are not regular files inside
                ``folder`` (FIFOs, sockets, devices, dangling or looping links, links to folders, links
                out of ``folder``) are never opened and are listed with reason ``not_a_file`` /
                ``outside_root``; ``"raise"``: the first failure is raised (a ``GalleryError``).
            progress: tqdm progress bar.
            chunk_size: images read and detected together.
            follow_links: also read symbolic links to photos outside ``folder`` (default: refused,
                ``outside_root``).

        Returns:
            :class:`Gallery` (in memory, with its per-photo embeddings; :meth:`save` writes it).

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
        idents, stray, refused = _list_gallery_files(root, follow_links)
        skipped = []

        def _skip(path, reason, message):
            if on_error == "raise":
                raise GalleryError(reason, message, path)
            skipped.append({"path": str(path), "reason": reason, "message": message})
            logger.warning("Gallery %s: skipping %s (%s: %s)", display_path(root), display_path(path), reason, message)

        for p in stray:
            _skip(p, "not_in_identity_folder", "file directly under the gallery root (expected <identity>/<images>)")
        for p, reason, detail in refused:  # never opened
            _skip(p, reason, detail)
        jobs = [(name, p) for name in idents for p in idents[name]]
        photos = {name: [] for name in idents}
        with tqdm(total=len(jobs), desc="gallery", unit="img", disable=not progress) as bar:
            for start in range(0, len(jobs), max(1, int(chunk_size))):
                chunk = jobs[start:start + max(1, int(chunk_size))]
                crops, owners = [], []
                for (name, path), face in zip(chunk, verifier.faces([p for _, p in chunk], errors="return")):
                    if isinstance(face, FaceVerifierError):
                        if on_error == "raise":
                            raise face
                        _skip(face.file, face.reason, face.detail)
                    else:
                        crops.append(face.crop)
                        owners.append((name, path, _decoded_photo_key(path, face)))
                if crops:
                    for (name, path, key), e in zip(owners, verifier.embed_crops(np.stack(crops))):
                        photos[name].append((key, _photo_source(path), 1, np.asarray(e, np.float32)))
                bar.update(len(chunk))
        names = []
        for name in idents:
            if photos[name]:
                names.append(name)
            else:
                _skip(str(root / name), "no_usable_image", f"identity {name!r} has no usable image")
        if not names:
            raise GalleryError("gallery_empty", "no identity with a usable image (expected <folder>/<identity>/"
                               f"<images>; {len(skipped)} file(s) skipped)", root)
        templates = np.stack([np.mean([e.astype(np.float64) for *_, e in photos[n]], axis=0) for n in names])
        templates /= np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
        return cls(names, templates, [len(photos[n]) for n in names], verifier.config(), verifier.probe_embedding(),
                   skipped=skipped, source=str(root), photos={n: photos[n] for n in names})

    def metadata(self) -> dict:
        """The gallery's metadata (as stored by :meth:`save`)."""
        return {"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "config": self.config, "created": self.created,
                "source": self.source, "num_identities": len(self), "skipped": self.skipped}

    def _rows(self):
        if self.photos is not None and set(self.photos) == set(self.identities):
            return [(name, list(self.photos[name])) for name in self.identities]
        return [(name, [(None, f"template of {int(c)} image(s)" + (f" from {self.path}" if self.path else ""), int(c),
                         e)]) for name, e, c in zip(self.identities, self.embeddings, self.counts)]

    def save(self, path) -> Path:
        """Write the gallery to ``path`` as a SQLite gallery file (any suffix; ``.db`` is customary).

        An existing SQLite gallery at ``path`` is rewritten in one transaction; any other regular file
        (e.g. a legacy ``.npz``) is replaced atomically; a new file is created whole, then linked into place.

        Raises:
            GalleryError: ``not_a_file`` (``path`` is a directory, FIFO or device), ``gallery_format``
                (``path`` is a SQLite database that is not a gallery, or the templates are invalid).

        Example::

            Gallery.load("people.npz").save("people.db")      # convert a legacy gallery
        """
        path = Path(path)
        if path.exists() or path.is_symlink():
            try:
                check_regular_file(path)
            except FileNotFoundError:  # a dangling link
                raise GalleryError("not_a_file", "the gallery path is a dangling link", path) from None
        dim = check_config(self.config, path)["embedding_dim"]
        check_templates(self.identities, self.embeddings, self.counts, dim, path)
        check_probe(self.probe, dim, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        GalleryStore.write_whole(path, self.config, self.probe, self._rows(), source=self.source,
                                 skipped=self.skipped)
        self.path, self.format = str(path), "sqlite"
        return path

    @classmethod
    def load(cls, path, verifier=None) -> "Gallery":
        """Read a gallery file (SQLite, or a legacy ``.npz``: decided by content), validated.

        Args:
            path: the file.
            verifier: if given, also :meth:`check_compatible`.

        Raises:
            FileNotFoundError: no such file.
            GalleryError: ``not_a_file``, ``gallery_format``, ``gallery_limit`` or (with ``verifier``)
                ``gallery_mismatch``.

        Example::

            gallery = Gallery.load("people.db", verifier)
        """
        path = Path(path)
        if gallery_kind(path) == "sqlite":
            data = GalleryStore(path).read()
            g = cls(data["names"], data["embeddings"], data["counts"], data["config"], data["probe"],
                    skipped=data["skipped"], source=data["source"], path=path, created=data["created"])
            g.format = "sqlite"
        else:
            g = cls._load_legacy(path)
        if verifier is not None:
            g.check_compatible(verifier)
        return g

    @classmethod
    def _load_legacy(cls, path) -> "Gallery":
        arrays, meta = read_legacy_npz(path)
        if meta.get("format") != GALLERY_FORMAT:
            raise GalleryError("gallery_format", f"not a keras_facemargin gallery (format "
                               f"{plain_text(meta.get('format'))!r})", path)
        if meta.get("version") != _LEGACY_VERSION:
            raise GalleryError("gallery_format", f"legacy .npz gallery version {plain_text(meta.get('version'))}, "
                               f"expected {_LEGACY_VERSION}", path)
        if "config" not in meta:
            raise GalleryError("gallery_format", "the gallery's model configuration is missing", path)
        config = check_config(meta["config"], path)
        dim = config["embedding_dim"]
        names = arrays["identities"].tolist()
        counts = arrays["counts"].astype(np.int64)
        check_templates(names, arrays["embeddings"], counts, dim, path)
        probe = check_probe(arrays["probe"], dim, path)
        skipped = meta.get("skipped", [])
        g = cls(names, arrays["embeddings"], counts, config, probe,
                skipped=skipped if isinstance(skipped, list) else [],
                source=meta.get("source") if isinstance(meta.get("source"), str) else None, path=path,
                created=meta.get("created") if isinstance(meta.get("created"), str) else None)
        g.format = "npz"
        return g

    def check_compatible(self, verifier) -> None:
        """Raise :class:`GalleryError` (``gallery_mismatch``) unless ``verifier`` embeds as the builder did.

        Compared: embedding size, input size, normalisation, and the embedding of a fixed probe image
        (cosine >= 0.999: catches other weights under the same name; a non-finite cosine fails). The
        model name alone may differ (e.g. a registry name and the path of the same file).

        Example::

            gallery.check_compatible(verifier)
        """
        _compare(self.config, self.probe, verifier, self.path or self.source)

    def search(self, embeddings, top_k: int = 5, score_budget: int = DEFAULT_SCORE_BUDGET) -> list:
        """The ``top_k`` identities of highest cosine for each embedding (exact, chunked search).

        Args:
            embeddings: ``(d,)`` or ``(m, d)`` probe embeddings (normalised here).
            top_k: candidates per probe.
            score_budget: scores held at once (:func:`~keras_facemargin.inference.gallery_search.top_k_search`).

        Returns:
            per probe, ``[{"identity", "score", "num_images"}]`` best first.

        Raises:
            GalleryError: ``gallery_empty``. ValueError: mismatched dimension, bad ``top_k``.

        Example::

            gallery.search(verifier.embed("q.jpg")[0], top_k=3)[0][0]["identity"]
        """
        if len(self) == 0:
            raise GalleryError("gallery_empty", "the gallery holds no identity", self.path)
        idx, scores = top_k_search(self.embeddings, embeddings, top_k, score_budget)
        return [[{"identity": self.identities[i], "score": float(s), "num_images": int(self.counts[i])}
                 for i, s in zip(row_i, row_s)] for row_i, row_s in zip(idx, scores)]


# ------------------------------------------------------------- incremental changes of a gallery file
def check_writable(path, verifier):
    """The :class:`GalleryStore` at ``path`` checked against ``verifier``'s model, or ``None`` if there is none.

    Raises:
        GalleryError: ``gallery_mismatch``, ``legacy_gallery``, ``gallery_format``, ``not_a_file``.

    Example::

        check_writable("people.db", verifier)    # before embedding photos for it
    """
    if not os.path.lexists(path):
        return None
    store = GalleryStore(path)  # not_a_file / legacy_gallery / gallery_format
    meta = store.metadata()
    _compare(meta["config"], meta["probe"], verifier, path)
    return store


def add_embeddings(path, verifier, identity, items) -> dict:
    """Add photo embeddings of ``identity`` to the gallery file ``path`` (created if missing), in one transaction.

    Args:
        path: the SQLite gallery (created with ``verifier``'s configuration and fingerprint if missing).
        verifier: the :class:`~keras_facemargin.FaceVerifier` that made the embeddings (checked against
            the gallery's model inside the transaction).
        identity: the identity's name (created if new; a photo added again replaces its earlier embedding).
        items: ``[(photo, embedding)]`` or ``[(photo, embedding, face)]``: a path or RGB array, its unit
            embedding and optionally the :class:`~keras_facemargin.inference.results.Face` it was embedded
            from, whose ``file_sha256`` (the bytes decoded) gives the photo's key without reading the file
            again; without it the key is :func:`photo_key` (the file is read).

    Returns:
        ``{"path", "identity", "added", "num_images", "identities"}``.

    Raises:
        GalleryError: ``gallery_mismatch``, ``legacy_gallery``, ``gallery_format``, ``not_a_file``.

    Example::

        emb, face = verifier.embed("alice1.jpg")
        add_embeddings("people.db", verifier, "alice", [("alice1.jpg", emb, face)])
    """
    check_identity_name(identity)
    store = check_writable(path, verifier)
    if store is None:
        store = GalleryStore.create(path, verifier.config(), verifier.probe_embedding(), source="kfm gallery add")
    rows = [(_decoded_photo_key(p, face[0] if face else None), _photo_source(p), 1, np.asarray(e, np.float32))
            for p, e, *face in items]
    report = store.add_photos(identity, rows, check=lambda meta: _compare(meta["config"], meta["probe"], verifier,
                                                                          path))
    return {"path": str(path), **report}


def add_photos(path, verifier, identity, photos, batch_size: int = 16, progress: bool = False) -> dict:
    """Detect, embed and add ``photos`` of ``identity`` to the gallery file ``path``.

    A photo that fails (unreadable, no face, several faces with ``face_policy="error"``) is reported
    in ``failed`` and the others are added. The model is checked against the gallery before any photo
    is embedded.

    Args:
        path: the SQLite gallery file (created if missing).
        verifier: a :class:`~keras_facemargin.FaceVerifier`.
        identity: the identity's name.
        photos: paths or RGB arrays.
        batch_size: photos detected and embedded together.
        progress: a tqdm progress bar.

    Returns:
        ``{"path", "identity", "added", "num_images", "identities", "failed": [FaceVerifierError]}``
        (``added`` is 0 and the file unchanged when every photo failed).

    Example::

        report = add_photos("people.db", verifier, "alice", ["a1.jpg", "a2.jpg"])
        [str(e) for e in report["failed"]]
    """
    from tqdm.auto import tqdm

    check_identity_name(identity)
    check_writable(path, verifier)  # another model's gallery fails before the photos are embedded
    items, failed = [], []
    photos = list(photos)
    with tqdm(total=len(photos), desc="gallery add", unit="img", disable=not progress) as bar:
        for start in range(0, len(photos), max(1, int(batch_size))):
            part = photos[start:start + max(1, int(batch_size))]
            faces = verifier.faces(part, errors="return")
            good = [i for i, f in enumerate(faces) if not isinstance(f, FaceVerifierError)]
            failed += [f for f in faces if isinstance(f, FaceVerifierError)]
            if good:
                embeddings = verifier.embed_crops(np.stack([faces[i].crop for i in good]))
                items += [(part[i], e, faces[i]) for i, e in zip(good, embeddings)]
            bar.update(len(part))
    if not items:
        return {"path": str(path), "identity": identity, "added": 0, "failed": failed}
    return {**add_embeddings(path, verifier, identity, items), "failed": failed}


def remove_from_gallery(path, identity, photos=None) -> dict:
    """Remove ``identity`` from the gallery file ``path``, or only some of its photos (one transaction).

    Args:
        path: the SQLite gallery file.
        identity: the name.
        photos: paths of photos to remove (matched by content when the file exists, else by its stored
            path); an identity left without photos is removed.

    Returns:
        ``{"path", "identity", "removed_photos", "num_images", "identities", "unmatched"}``.

    Raises:
        GalleryError: ``unknown_identity``, ``legacy_gallery``, ``gallery_format``, ``not_a_file``.

    Example::

        remove_from_gallery("people.db", "bob")
        remove_from_gallery("people.db", "alice", ["old_photo.jpg"])
    """
    store = GalleryStore(path)
    wanted = None
    if photos is not None:
        wanted = [(photo_key(p) if os.path.isfile(p) else None, _photo_source(p)) for p in photos]
    return {"path": str(path), **store.remove(identity, wanted)}
