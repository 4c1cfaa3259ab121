"""`kfm embed PHOTO_OR_DIR... --output F.npz`: the face embedding of every photo, in one file.

Folders are searched recursively for images. Each photo's face (``--face-policy``) is detected,
aligned and embedded (flip sum, L2-normalised) with one model load, in batches, with a progress
bar. A photo that fails (no face, unreadable, several faces with ``--face-policy error``) is
reported and listed in the file; the run goes on.

The ``.npz`` (read with ``numpy.load(F, allow_pickle=False)``) holds ``embeddings`` (float32
``(N, d)``, unit rows), ``paths`` (``(N,)`` str, row order), ``boxes`` (float32 ``(N, 4)``,
``x, y, w, h``), ``failed_paths`` / ``failed_reasons`` (str) and ``metadata`` (a JSON string: the
model's configuration). It is written atomically (a temporary file, then a rename).

Example::

    kfm embed photos/ --output photos.npz
    kfm embed a.jpg b.jpg --model mbf_dlib_distill --output ab.npz --json

In a folder, an entry with an image suffix that is not a regular file inside the folder (a FIFO, socket
or device, a dangling or looping symbolic link, a link out of the folder unless ``--follow-links``) is
never opened: it is reported (reason ``not_a_file`` / ``outside_root``, exit code 5) and listed in the
file like the photos that fail (``too_large``, ``not_an_image``, ``unreadable``, ``no_face``, ...). Any
file name works; names that hold newlines or bytes that are not UTF-8 are shown escaped
(:func:`keras_facemargin.utils.folder_files.display_path`), and kept as the file system's name
(surrogate escapes) in ``paths`` / ``failed_paths``.

``--json``: one object per photo (``{"status": "ok", "source", "row", "box", "confidence",
"num_faces"}`` or an error object ``{"status": "error", "error": REASON, "file", "message"}``), then
``{"status": "ok", "output", "embedded", "failed"}``; otherwise each failure is a
line on stderr, then a summary line. The exit status is 0 when the file is written, even if some
photos failed (each reported), else (no photo embedded) the first failure's code (3, 4 or 5).
"""

from __future__ import annotations

import os
import sys

from keras_facemargin.cli import _common

__all__ = ["register", "run_embed", "write_embeddings"]


def register(sub) -> None:
    """Add ``embed`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "embed", __doc__, [_common.common_options()])
    p.add_argument("photos", nargs="+", metavar="PHOTO_OR_DIR", help="photos, or folders searched recursively")
    p.add_argument("--output", required=True, help="the .npz to write")
    p.add_argument("--batch-size", type=int, default=16, help="photos detected and embedded together (default 16)")
    _common.add_model_arguments(p, verdict=False)
    _common.add_follow_links(p)
    p.set_defaults(func=run_embed)


def write_embeddings(path, rows, failures, metadata) -> None:
    """Write the ``.npz`` described in the module docstring, atomically."""
    import json

    import numpy as np

    arrays = {"embeddings": np.stack([e for _, _, e in rows]).astype(np.float32),
              "paths": np.array([p for p, _, _ in rows], dtype=str),
              "boxes": np.array([[np.nan] * 4 if f.box is None else f.box for _, f, _ in rows], np.float32),
              "failed_paths": np.array([p for p, _ in failures], dtype=str).reshape(-1),
              "failed_reasons": np.array([e.reason for _, e in failures], dtype=str).reshape(-1),
              "metadata": np.array(json.dumps(metadata, sort_keys=True))}
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_embed(args) -> int:
    """Embed the photos; write ``--output``."""
    if not args.output.endswith(".npz"):
        raise ValueError(f"--output must end with .npz, got {args.output!r}")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    refused = []
    photos = _common.expand_photos(args.photos, refused, follow_links=args.follow_links)
    rows, failures, first_code = [], [], None
    for err in refused:  # entries of a folder never opened (FIFO, link out of the folder, ...)
        failures.append((err.file, err))
        code = _common.error_to_exit(err, args)  # reported now, one by one
        first_code = first_code or code
    total = len(photos) + len(refused)
    if not photos:
        print(f"kfm embed: no photo to embed: {len(refused)} file(s) refused "
              f"({_common.reason_counts(refused)}); {_common.display_path(args.output)} not written", file=sys.stderr)
        return first_code
    verifier = _common.build_verifier(args, need_threshold=False)
    for photo, face, embedding in _common.embed_photos(verifier, photos, args):
        if embedding is None:
            failures.append((photo, face))
            code = _common.error_to_exit(face, args)  # reported now, per photo
            first_code = first_code or code
            continue
        rows.append((photo, face, embedding))
        if args.json:
            _common.emit({"status": "ok", "source": _common.display_path(photo), "row": len(rows) - 1,
                          "box": None if face.box is None else list(face.box), "confidence": face.confidence,
                          "num_faces": face.num_faces})
    if failures and not args.json:
        print(f"kfm embed: {len(failures)} of {total} photo(s) failed ({_common.reason_counts(failures)})",
              file=sys.stderr)
    if not rows:
        print(f"kfm embed: no face embedded from {total} photo(s); {_common.display_path(args.output)} not written",
              file=sys.stderr)
        return first_code
    metadata = {"model": verifier.config(), "num_photos": total, "command": "kfm embed"}
    write_embeddings(args.output, rows, failures, metadata)
    if args.json:
        _common.emit({"status": "ok", "output": args.output, "embedded": len(rows), "failed": len(failures)})
    else:
        print(f"embedded {len(rows)} of {total} photo(s) ({verifier.embedding_dim}-d, model "
              f"{verifier.model_name}) to {_common.display_path(args.output)}"
              + (f"; {len(failures)} failed" if failures else ""))
    return _common.EXIT_OK

