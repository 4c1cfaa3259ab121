#!/usr/bin/env python
"""Who is in the photo? Match its face against a gallery of identities; prints one JSON object.

The gallery is a folder ``DIR/<identity>/<images>`` (embedded now: each identity's template is the
re-normalised mean of its images' embeddings) or a file written by ``--save-gallery`` (no pickle;
refused if it was built with another model). The answer is the best identity if its cosine score
``> threshold`` (``--threshold``, else the model's LFW-calibrated 1:1 threshold at ``--far``),
else ``"unknown"``.

Example::

    python tools/identify.py --gallery people/ --save-gallery people.npz query.jpg
    python tools/identify.py --gallery people.npz query.jpg --top-k 3
    python tools/identify.py --gallery people/ --save-gallery people.npz     # build only

Output (stdout): ``{"status": "ok", "identity", "known", "score", "threshold", "far", "candidates":
[{"identity", "score", "num_images"}, ...], "face": {...}, "gallery": {...}}`` (without a photo:
``{"status": "ok", "gallery": {...}}``), or ``{"status": "error", "error": REASON, "file", "message"}``.

Exit status: 0 on a decision (known or unknown) or a built gallery, 2 bad arguments / model / no
threshold, 3 no face found, 4 several faces with ``--face-policy error``, 5 unreadable or not an
image, 6 gallery file damaged or built with another model.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from verify_faces import add_model_arguments, build_verifier, emit, emit_error  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", nargs="?", default=None, help="photo to identify (optional with --save-gallery)")
    parser.add_argument("--gallery", required=True,
                        help="folder of <identity>/<images>, or a gallery file from --save-gallery")
    parser.add_argument("--save-gallery", default=None, help="write the gallery to this file (.npz)")
    parser.add_argument("--top-k", type=int, default=5, help="candidates to list (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while building")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.photo is None and args.save_gallery is None:
        parser.error("give a photo to identify, or --save-gallery FILE to only build the gallery")
    if args.top_k <= 0:
        parser.error(f"--top-k must be positive, got {args.top_k}")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_facemargin.inference.gallery import Gallery

    try:
        verifier = build_verifier(args)
        if os.path.isdir(args.gallery):
            gallery = Gallery.build(verifier, args.gallery, progress=not args.no_progress)
            built = True
        else:
            gallery = Gallery.load(args.gallery, verifier)
            built = False
        info = {"path": args.gallery, "built": built, "identities": len(gallery),
                "images": int(gallery.counts.sum()), "skipped": gallery.skipped, "model": gallery.config["model"]}
        if args.save_gallery:
            info["saved_to"] = str(gallery.save(args.save_gallery))
        if args.photo is None:
            emit({"status": "ok", "gallery": info})
            return 0
        result = verifier.identify(args.photo, gallery, top_k=args.top_k)
    except Exception as e:
        return emit_error(e)
    emit({**result.to_dict(include_crops=args.include_crops), "gallery": info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
