"""`kfm gallery add|remove|list|import GALLERY ...`: keep a gallery of identities for `kfm identify`.

The gallery is one SQLite file (:mod:`keras_facemargin.inference.gallery_store`; any name, ``.db`` is
customary): per identity the embeddings of its photos and their renormalised mean (the template),
with the model's configuration and fingerprint. Every change is one transaction: several ``kfm
gallery add`` at once (threads or processes) wait for each other, and the file stays whole if one
is killed.

``add`` embeds the photos (folders are searched recursively; a progress bar shows the work) and
adds them to the identity (created if new; a photo added again replaces its earlier embedding).
Photos that fail (no face, unreadable, ...) are reported one by one and the others are added; the
gallery is created with the model's configuration if missing, and refused if it was built with
another model. ``remove`` removes an identity, or only the photos named. ``list`` shows the
identities and their photo counts. ``import`` converts a legacy ``.npz`` gallery of earlier
versions (read-only) into a new SQLite gallery.

Example::

    kfm gallery add people.db alice alice1.jpg alice2.jpg
    kfm gallery add people.db bob photos/bob/
    kfm gallery list people.db --json
    kfm gallery remove people.db alice alice2.jpg
    kfm gallery remove people.db bob
    kfm gallery import people.npz people.db

In a folder, an entry with an image suffix that is not a regular file inside the folder (a FIFO, socket
or device, a dangling or looping symbolic link, a link out of the folder unless ``--follow-links``) is
never opened; it is reported with the photos that fail (``--json``: one ``{"status": "error", "error":
REASON, "file", "message"}`` object each, then the summary with the count ``failed``; otherwise a line
each and a summary line on stderr), and the others are added. Names that hold newlines or bytes that are
not UTF-8 are shown escaped (:func:`keras_facemargin.utils.folder_files.display_path`).

Exit status: 0 done (even if some photos failed; each is reported); 6 damaged gallery, one of another
model, a legacy ``.npz`` asked to change, or no such identity (``remove``); ``add`` with no usable photo: the first photo's code (3 no face, 5
unreadable, ...).
"""

from __future__ import annotations

import os
import sys

from keras_facemargin.cli import _common

__all__ = ["register", "run_add", "run_remove", "run_list", "run_import"]


def register(sub) -> None:
    """Add ``gallery add|remove|list|import`` to the ``kfm`` sub-parsers."""
    common = _common.common_options()
    p = _common.add_parser(sub, "gallery", __doc__, [], help="add to, remove from or list a gallery")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = _common.add_parser(actions, "add", __doc__, [common], help="add photos of an identity (creates the file)")
    add.add_argument("gallery", help="the gallery file (created if missing)")
    add.add_argument("identity", help="the identity's name")
    add.add_argument("photos", nargs="+", metavar="PHOTO", help="photos of the identity, or folders of them")
    add.add_argument("--batch-size", type=int, default=16, help="photos detected and embedded together")
    _common.add_model_arguments(add, verdict=False)
    _common.add_follow_links(add)
    add.set_defaults(func=run_add)
    remove = _common.add_parser(actions, "remove", __doc__, [common], help="remove an identity, or some of its photos")
    remove.add_argument("gallery", help="the gallery file")
    remove.add_argument("identity", help="the identity")
    remove.add_argument("photos", nargs="*", metavar="PHOTO",
                        help="remove only these photos (by content, or by the path they were added with)")
    remove.set_defaults(func=run_remove)
    show = _common.add_parser(actions, "list", __doc__, [common], help="list the identities")
    show.add_argument("gallery", help="the gallery file (SQLite, or a legacy .npz)")
    show.set_defaults(func=run_list)
    imp = _common.add_parser(actions, "import", __doc__, [common], help="convert a legacy .npz gallery")
    imp.add_argument("source", help="the legacy .npz gallery (or any gallery file)")
    imp.add_argument("output", help="the new SQLite gallery (must not exist)")
    imp.set_defaults(func=run_import)


def run_add(args) -> int:
    """Embed the photos and add them to ``args.identity``; each failed photo is reported."""
    from keras_facemargin.inference.gallery import add_embeddings, check_writable
    from keras_facemargin.inference.gallery_files import check_identity_name

    check_identity_name(args.identity)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    refused = []
    photos = _common.expand_photos(args.photos, refused, follow_links=args.follow_links)
    items, failures, first_code = [], [], None
    for err in refused:  # entries of a folder never opened (FIFO, link out of the folder, ...)
        failures.append(err)
        code = _common.error_to_exit(err, args)  # reported now, one by one
        first_code = first_code or code
    verifier = None
    if photos:
        verifier = _common.build_verifier(args, need_threshold=False)
        check_writable(args.gallery, verifier)  # another model's gallery fails before the photos are embedded
        for photo, face, embedding in _common.embed_photos(verifier, photos, args, desc="gallery add"):
            if embedding is None:
                failures.append(face)
                code = _common.error_to_exit(face, args)
                first_code = first_code or code
            else:
                items.append((photo, embedding, face))  # the face's sha256: the photo is not read again
    total = len(photos) + len(refused)
    if failures and not args.json:
        print(f"kfm gallery add: {len(failures)} of {total} photo(s) failed ({_common.reason_counts(failures)})",
              file=sys.stderr)
    if not items:  # every photo failed, and was reported
        print(f"kfm gallery add: no usable photo of {_common.display_path(args.identity)!r}; "
              f"{_common.display_path(args.gallery)} is unchanged", file=sys.stderr)
        return first_code
    report = add_embeddings(args.gallery, verifier, args.identity, items)
    failed = len(failures)
    if args.json:
        _common.emit({"status": "ok", "gallery": args.gallery, "identity": args.identity, "added": len(items),
                      "failed": failed, "num_images": report["num_images"],
                      "identities": report["identities"]})
    else:
        print(f"{_common.display_path(args.gallery)}: added {len(items)} photo(s) of "
              f"{_common.display_path(args.identity)!r} ({report['num_images']} in all; "
              f"{report['identities']} identities)" + (f"; {failed} failed" if failed else ""))
    return _common.EXIT_OK


def run_remove(args) -> int:
    """Remove ``args.identity``, or only ``args.photos`` of it."""
    from keras_facemargin.inference.gallery import remove_from_gallery

    report = remove_from_gallery(args.gallery, args.identity, args.photos or None)
    if args.json:
        _common.emit({"status": "ok", "gallery": args.gallery, "removed": args.identity,
                      "removed_photos": report["removed_photos"], "num_images": report["num_images"],
                      "identities": report["identities"], "unmatched": report["unmatched"]})
    else:
        what = (f"{report['removed_photos']} photo(s) of {args.identity!r} ({report['num_images']} left)"
                if args.photos else repr(args.identity))
        print(f"{args.gallery}: removed {what}; {report['identities']} identities"
              + (f"; not found: {', '.join(report['unmatched'])}" if report["unmatched"] else ""))
    return _common.EXIT_OK


def run_list(args) -> int:
    """Print the identities and their image counts."""
    from keras_facemargin.inference.gallery import Gallery
    from keras_facemargin.utils.untrusted import plain_text

    g = Gallery.load(args.gallery)
    rows = [{"identity": name, "num_images": int(count)} for name, count in zip(g.identities, g.counts)]
    if args.json:
        _common.emit({"status": "ok", "gallery": args.gallery, "format": g.format, "model": g.config.get("model"),
                      "embedding_dim": int(g.config["embedding_dim"]), "created": g.created, "identities": rows})
        return _common.EXIT_OK
    legacy = " (legacy .npz, read-only: see `kfm gallery import`)" if g.format == "npz" else ""
    print(f"{args.gallery}: {len(g)} identities, {int(g.counts.sum())} images, model "
          f"{plain_text(g.config.get('model'))}{legacy}")
    for row in rows:
        print(f"  {plain_text(row['identity'], 200)}\t{row['num_images']}")
    return _common.EXIT_OK


def run_import(args) -> int:
    """Convert ``args.source`` (a legacy ``.npz``) into the new SQLite gallery ``args.output``."""
    from keras_facemargin.inference.gallery import Gallery

    if os.path.lexists(args.output):
        raise ValueError(f"{args.output} exists; `kfm gallery import` writes a new gallery file")
    g = Gallery.load(args.source)
    g.save(args.output)
    if args.json:
        _common.emit({"status": "ok", "source": args.source, "gallery": args.output, "identities": len(g),
                      "images": int(g.counts.sum()), "model": g.config.get("model")})
    else:
        print(f"{args.output}: {len(g)} identities, {int(g.counts.sum())} images imported from {args.source}")
    return _common.EXIT_OK
