"""`kfm verify A B` (same person?) and `kfm identify GALLERY PHOTO...` (who is it?).

Each photo's face is detected with MTCNN, aligned to the model's crop template and embedded
(flip sum); two faces are the same person iff their cosine ``score > threshold``
(:class:`keras_facemargin.FaceVerifier`). The threshold is ``--threshold``, else the model's
threshold calibrated on held-out identities (``--far`` picks one at a false accept rate).

Example::

    kfm verify a.jpg b.jpg
    kfm verify a.jpg b.jpg --model mbf_dlib_distill --far 1e-3 --json
    kfm identify people.db query1.jpg query2.jpg --top-k 3
    kfm identify people/ query.jpg --save-gallery people.db      # build from <identity>/ folders

``--json`` output: ``verify``: ``{"status": "ok", "is_same", "score", "threshold", "far",
"threshold_source", "model", "faces": [...], "same"}`` (``same``: the old name of ``is_same``);
``identify``: one object per photo, ``{"status": "ok", "identity", "known", "score", "threshold",
"candidates": [{"identity", "score", "num_images"}, ...], "face", "gallery"}`` (``identity`` is
``"unknown"`` below the threshold); an error is ``{"status": "error", "error", "file", "message"}``.
"""

from __future__ import annotations

import os

from keras_facemargin.cli import _common

__all__ = ["register", "run_verify", "run_identify"]


def register(sub) -> None:
    """Add ``verify`` and ``identify`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "verify", __doc__, [_common.common_options()],
                           help="are the faces of two photos the same person?")
    p.add_argument("image_a", help="first photo (JPEG, PNG, ...)")
    p.add_argument("image_b", help="second photo")
    _common.add_model_arguments(p)
    p.add_argument("--include-crops", action="store_true",
                   help="add each aligned crop as a base64 PNG (crop_png_base64) to the JSON")
    p.set_defaults(func=run_verify)

    p = _common.add_parser(sub, "identify", __doc__, [_common.common_options()],
                           help="who, of a gallery's identities, is in each photo?",
                           usage="kfm identify GALLERY PHOTO... [options]")
    p.add_argument("paths", nargs="*", metavar="GALLERY PHOTO",
                   help="the gallery (a file of `kfm gallery add` / --save-gallery, a legacy .npz, or a folder "
                        "of <identity>/<images>), then the photos or folders of photos to identify")
    p.add_argument("--gallery", default=None, help="the gallery, instead of the first positional argument")
    p.add_argument("--save-gallery", default=None,
                   help="write the gallery (e.g. one built from a folder) to this SQLite gallery file")
    p.add_argument("--top-k", type=int, default=5, help="candidates to list (default 5)")
    p.add_argument("--include-crops", action="store_true", help="add the aligned crop (base64 PNG) to the JSON")
    _common.add_model_arguments(p)
    _common.add_follow_links(p)
    p.set_defaults(func=run_identify)


def run_verify(args) -> int:
    """Verify two photos; 0 on a verdict (same or not)."""
    verifier = _common.build_verifier(args)
    result = verifier.verify(args.image_a, args.image_b)
    if args.json:
        report = result.to_dict(include_crops=args.include_crops)
        _common.emit({"status": "ok", "is_same": report["same"], **report})
        return _common.EXIT_OK
    verdict = "same person" if result.is_same else "different people"
    relation = ">" if result.is_same else "<="
    print(f"{verdict}: score {result.score:.4f} {relation} threshold {result.threshold:.4f} "
          f"({result.threshold_source})")
    return _common.EXIT_OK


def _gallery(args, verifier):
    """``(Gallery, info dict)``: loaded from a file (checked against the model) or built from a folder."""
    from keras_facemargin.inference.gallery import Gallery
    from keras_facemargin.inference.gallery_files import check_regular_file

    if args.save_gallery and os.path.exists(args.save_gallery):
        check_regular_file(args.save_gallery)  # a directory or FIFO is refused before any work
    if os.path.isdir(args.gallery):
        gallery, built = Gallery.build(verifier, args.gallery, progress=not args.no_progress,
                                       follow_links=getattr(args, "follow_links", False)), True
    else:
        gallery, built = Gallery.load(args.gallery, verifier), False
    info = {"path": args.gallery, "built": built, "identities": len(gallery), "images": int(gallery.counts.sum()),
            "skipped": gallery.skipped, "model": gallery.config["model"]}
    if args.save_gallery:
        info["saved_to"] = str(gallery.save(args.save_gallery))
    return gallery, info


def run_identify(args) -> int:
    """Identify each photo; 0 when every photo got an answer (known or unknown), else the first error's code."""
    from keras_facemargin.errors import FaceVerifierError

    paths = list(args.paths)
    if args.gallery is None:
        if not paths:
            raise ValueError("give a gallery and the photos to identify: kfm identify GALLERY PHOTO...")
        args.gallery = paths.pop(0)
    if not paths and args.save_gallery is None:
        raise ValueError("give a photo to identify, or --save-gallery FILE to only build the gallery")
    if args.top_k <= 0:
        raise ValueError(f"--top-k must be positive, got {args.top_k}")
    refused = []
    photos = _common.expand_photos(paths, refused, follow_links=args.follow_links)
    status = _common.EXIT_OK
    for err in refused:  # entries of a folder never opened (FIFO, link out of the folder, ...)
        code = _common.error_to_exit(err, args)  # reported now, one by one
        status = status or code
    if refused and not photos and args.save_gallery is None:
        return status
    verifier = _common.build_verifier(args)
    gallery, info = _gallery(args, verifier)
    if not photos:
        if args.json:
            _common.emit({"status": "ok", "gallery": info})
        else:
            print(f"gallery {info['path']}: {info['identities']} identities, {info['images']} images"
                  + (f", saved to {info['saved_to']}" if "saved_to" in info else ""))
        return status
    with _common.progress_bar(args, len(photos), "identify") as bar:
        for photo in photos:
            try:
                result = verifier.identify(photo, gallery, top_k=args.top_k)
            except FaceVerifierError as err:
                code = _common.error_to_exit(err, args)
                status = status or code
            else:
                _print_identity(args, result, info)
            bar.update(1)
    return status


def _print_identity(args, result, info) -> None:
    if args.json:
        _common.emit({**result.to_dict(include_crops=args.include_crops), "gallery": info})
        return
    best = result.candidates[0]
    if result.is_known:
        line = f"{result.identity} (score {result.score:.4f} > threshold {result.threshold:.4f})"
    else:
        line = f"unknown (best {best['identity']} {best['score']:.4f} <= threshold {result.threshold:.4f})"
    print(f"{_common.display_path(result.face.source)}: {line}")
    for cand in result.candidates[1:]:
        print(f"    {cand['identity']}: {cand['score']:.4f}")
