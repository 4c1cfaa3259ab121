"""`kfm gallery add|remove|list GALLERY ...`: keep a gallery of identities for `kfm identify`.

The gallery is the ``.npz`` of :class:`keras_facemargin.inference.gallery.Gallery` (one unit-norm
template per identity, the model's configuration and fingerprint; no pickle). That format has no
incremental update, so ``add`` and ``remove`` load it, change it and save it again: the new file is
written beside the old one and renamed over it (a reader never sees a half-written file), and
writers of the same gallery wait for each other on ``GALLERY.lock`` (``fcntl.flock``; POSIX).

``add`` embeds the photos (folders are searched recursively) and makes their mean the identity's
template; for an identity already in the gallery the stored template, weighted by its image count,
is averaged with the new embeddings. That is an approximation (the file keeps the normalised mean
only, so the old photos weigh slightly more than in a rebuild from all photos). Photos that fail
(no face, unreadable, ...) are reported and left out.

Example::

    kfm gallery add people.npz alice alice1.jpg alice2.jpg
    kfm gallery add people.npz bob photos/bob/
    kfm gallery list people.npz --json
    kfm gallery remove people.npz bob

Exit status: 0 done; 6 damaged gallery, one of another model, or no such identity (``remove``);
``add`` with no usable photo: the first photo's code (3 no face, 5 unreadable, ...).
"""

from __future__ import annotations

import contextlib
import os
import sys

from keras_facemargin.cli import _common

__all__ = ["register", "run_add", "run_remove", "run_list", "locked"]


def register(sub) -> None:
    """Add ``gallery add|remove|list`` to the ``kfm`` sub-parsers."""
    common = _common.common_options()
    p = _common.add_parser(sub, "gallery", __doc__, [], help="add to, remove from or list a gallery (.npz)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = _common.add_parser(actions, "add", __doc__, [common], help="add photos of an identity (creates the file)")
    add.add_argument("gallery", help="the gallery .npz (created if missing)")
    add.add_argument("identity", help="the identity's name")
    add.add_argument("photos", nargs="+", metavar="PHOTO", help="photos of the identity, or folders of them")
    add.add_argument("--batch-size", type=int, default=16, help="photos detected and embedded together")
    _common.add_model_arguments(add, verdict=False)
    add.set_defaults(func=run_add)
    remove = _common.add_parser(actions, "remove", __doc__, [common], help="remove an identity")
    remove.add_argument("gallery", help="the gallery .npz")
    remove.add_argument("identity", help="the identity to remove")
    remove.set_defaults(func=run_remove)
    show = _common.add_parser(actions, "list", __doc__, [common], help="list the identities")
    show.add_argument("gallery", help="the gallery .npz")
    show.set_defaults(func=run_list)


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive ``fcntl.flock`` on ``<path>.lock`` (no lock where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the file whole
        yield
        return
    lock_path = f"{os.path.abspath(path)}.lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_gallery_name(path):
    if not str(path).endswith(".npz"):
        raise ValueError(f"the gallery must be an .npz file, got {str(path)!r}")


def run_add(args) -> int:
    """Embed the photos and add them to ``args.identity`` (a new identity, or averaged with the stored one)."""
    import numpy as np

    from keras_facemargin.inference.gallery import Gallery

    _check_gallery_name(args.gallery)
    if not args.identity.strip():
        raise ValueError("the identity name must not be empty")
    photos = _common.expand_photos(args.photos)
    verifier = _common.build_verifier(args, need_threshold=False)
    if os.path.exists(args.gallery):
        Gallery.load(args.gallery, verifier)  # a gallery of another model fails before the photos are embedded
    rows, first_code = [], None
    for photo, face, embedding in _common.embed_photos(verifier, photos, args, desc="gallery add"):
        if embedding is None:
            first_code = first_code or _common.error_to_exit(face, args)
        else:
            rows.append(embedding)
    if not rows:  # every photo failed, and was reported
        print(f"kfm gallery add: no usable photo of {args.identity!r}; {args.gallery} is unchanged", file=sys.stderr)
        return first_code
    total = np.sum(rows, axis=0)
    with locked(args.gallery):
        if os.path.exists(args.gallery):
            old = Gallery.load(args.gallery, verifier)
            names, templates, counts = list(old.identities), list(old.embeddings), list(old.counts)
            extra = {"skipped": old.skipped, "source": old.source, "created": old.created}
        else:
            names, templates, counts, extra = [], [], [], {"source": "kfm gallery add"}
        if args.identity in names:
            i = names.index(args.identity)
            total = total + templates[i].astype(np.float64) * counts[i]
            counts[i] += len(rows)
            templates[i] = total
        else:
            names.append(args.identity)
            templates.append(total)
            counts.append(len(rows))
        order = sorted(range(len(names)), key=names.__getitem__)
        emb = np.stack([templates[i] for i in order]).astype(np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        gallery = Gallery([names[i] for i in order], emb, [counts[i] for i in order], verifier.config(),
                          verifier.probe_embedding(), **extra)
        gallery.save(args.gallery)
    n, failed = int(gallery.counts[gallery.identities.index(args.identity)]), len(photos) - len(rows)
    if args.json:
        _common.emit({"status": "ok", "gallery": args.gallery, "identity": args.identity, "added": len(rows),
                      "failed": failed, "num_images": n, "identities": len(gallery)})
    else:
        print(f"{args.gallery}: added {len(rows)} photo(s) of {args.identity!r} ({n} in all; "
              f"{len(gallery)} identities)" + (f"; {failed} failed" if failed else ""))
    return _common.EXIT_OK


def run_remove(args) -> int:
    """Remove ``args.identity`` from the gallery."""
    from keras_facemargin.errors import GalleryError
    from keras_facemargin.inference.gallery import Gallery

    _check_gallery_name(args.gallery)
    with locked(args.gallery):
        old = Gallery.load(args.gallery)
        if args.identity not in old.identities:
            raise GalleryError("unknown_identity", f"no identity {args.identity!r} in the gallery (it holds "
                               f"{len(old)}; see `kfm gallery list {args.gallery}`)", args.gallery)
        if len(old) == 1:
            raise GalleryError("gallery_empty", f"{args.identity!r} is the gallery's only identity; a gallery "
                               "cannot be empty: delete the file instead", args.gallery)
        keep = [i for i, name in enumerate(old.identities) if name != args.identity]
        Gallery([old.identities[i] for i in keep], old.embeddings[keep], old.counts[keep], old.config, old.probe,
                skipped=old.skipped, source=old.source, created=old.created).save(args.gallery)
    if args.json:
        _common.emit({"status": "ok", "gallery": args.gallery, "removed": args.identity, "identities": len(keep)})
    else:
        print(f"{args.gallery}: removed {args.identity!r} ({len(keep)} identities left)")
    return _common.EXIT_OK


def run_list(args) -> int:
    """Print the identities and their image counts."""
    from keras_facemargin.inference.gallery import Gallery

    g = Gallery.load(args.gallery)
    rows = [{"identity": name, "num_images": int(count)} for name, count in zip(g.identities, g.counts)]
    if args.json:
        _common.emit({"status": "ok", "gallery": args.gallery, "model": g.config.get("model"),
                      "embedding_dim": int(g.embeddings.shape[1]), "created": g.created, "identities": rows})
        return _common.EXIT_OK
    print(f"{args.gallery}: {len(g)} identities, {int(g.counts.sum())} images, model {g.config.get('model')}")
    for row in rows:
        print(f"  {row['identity']}\t{row['num_images']}")
    return _common.EXIT_OK
