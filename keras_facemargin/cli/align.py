"""`kfm align --input RAW --output ALIGNED`: align a folder of raw face photos to ArcFace-template crops.

Turns ``RAW/<identity>/*.jpg`` into ``ALIGNED/<identity>/*.jpg`` (same relative paths) with
5-point similarity alignment to the insightface ArcFace template
(:mod:`keras_facemargin.data.align`). Landmarks come from ``--landmarks FILE`` (lines
``path x1 y1 ... x5 y5``, paths relative to RAW; order left eye, right eye, nose, left mouth, right
mouth, image-left first) or from the MTCNN detector. With several faces the large-and-central one is
aligned (facenet's rule: max ``w*h - 2*||box centre - image centre||^2``) and the file is also
listed under ``multiple_faces``.

Every input file appears in exactly one of ``aligned`` / ``no_face`` / ``unreadable`` in the
report, printed as a summary and written as JSON (default ``ALIGNED/align_report.json``).

Example::

    kfm align --input raw/ --output aligned/ --size 112
    kfm align --input raw/ --output aligned/ --landmarks landmarks.txt

The job goes on past bad files: FIFOs, sockets, devices, dangling or looping symbolic links, links to
folders and links out of RAW (unless ``--follow-links``) are never opened, files over the photo limits
are never read, and each is listed under ``unreadable`` with its reason (``not_a_file``,
``outside_root``, ``too_large``, ``not_an_image``, ``unreadable``). Any file name works (not UTF-8,
newlines, 250 bytes); names are shown escaped
(:func:`keras_facemargin.utils.folder_files.display_path`). ``--json``: one object ``{"status": "error",
"error": REASON, "file", "message"}`` per file not aligned, then the summary ``{"status": "ok",
"report", "total", "aligned", ...}``; otherwise a summary line on stderr.

Exit status: 0 when the job finished, even if some files failed (each is reported; see the report),
1 with ``--strict`` when any file was not aligned, 2 on bad arguments.
"""

from __future__ import annotations

import os
import sys

from keras_facemargin.cli import _common
from keras_facemargin.utils.folder_files import display_path

__all__ = ["register", "run_align"]


def register(sub) -> None:
    """Add ``align`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "align", __doc__, [_common.common_options()])
    p.add_argument("--input", required=True, help="folder of raw photos (<identity>/*.jpg)")
    p.add_argument("--output", required=True, help="destination folder (same structure)")
    p.add_argument("--landmarks", default=None, help="landmarks file; default: detect with MTCNN")
    p.add_argument("--size", type=int, default=112, help="output side in pixels (default 112)")
    p.add_argument("--method", default="lstsq", choices=["lstsq", "lmeds", "ransac"],
                   help="similarity estimator (default lstsq = insightface)")
    p.add_argument("--ext", default=None, help="output extension, e.g. .png (default: keep)")
    p.add_argument("--report", default=None, help="JSON report path (default OUTPUT/align_report.json)")
    p.add_argument("--min-confidence", type=float, default=0.0, help="MTCNN confidence threshold")
    p.add_argument("--batch-size", type=int, default=16, help="MTCNN batch size (same-shape images)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file was not aligned")
    p.add_argument("--follow-links", action="store_true",
                   help="also read symbolic links to files outside --input (default: refused, outside_root)")
    p.set_defaults(func=run_align)


def run_align(args) -> int:
    """Align the folder and write the report."""
    from keras_facemargin.data import MTCNNDetector, align_folder
    from keras_facemargin.data.align import write_report

    if args.size <= 0:
        raise ValueError(f"--size must be positive, got {args.size}")
    detector = None
    if args.landmarks is None:
        detector = MTCNNDetector(batch_size=args.batch_size, min_confidence=args.min_confidence)
    report = align_folder(args.input, args.output, landmarks=args.landmarks, image_size=args.size,
                          detector=detector, method=args.method, output_ext=args.ext,
                          progress=not args.no_progress, follow_links=args.follow_links)
    report_path = args.report or os.path.join(args.output, "align_report.json")
    write_report(report, report_path)
    c = report["counts"]
    failed = [(item["path"], item.get("reason") or "unreadable", item["error"]) for item in report["unreadable"]]
    failed = [(p, r, d[len(r) + 2:] if d.startswith(f"{r}: ") else d) for p, r, d in failed]
    failed += [(item["path"], "no_face", item["reason"]) for item in report["no_face"]]
    if args.json:
        for path, reason, detail in failed:  # one object per file not aligned, then the summary
            shown = display_path(os.path.join(args.input, path))
            _common.emit({"status": "error", "error": reason, "file": shown, "message": f"{shown}: {detail}"})
        _common.emit({"status": "ok", "report": report_path, **c})
    else:
        print(f"total {c['total']}: aligned {c['aligned']}, no face {c['no_face']}, unreadable {c['unreadable']} "
              f"(multiple faces {c['multiple_faces']})")
        for item in report["no_face"]:
            print(f"  no face:    {display_path(item['path'])} ({item['reason']})")
        for item in report["unreadable"]:
            print(f"  unreadable: {display_path(item['path'])} ({item['error']})")
        for item in report["multiple_faces"]:
            print(f"  multiple:   {display_path(item['path'])} ({item['num_faces']} faces, kept #{item['chosen']})")
        if report["unused_landmarks"]:
            print(f"  {len(report['unused_landmarks'])} landmark entries match no input file")
        print(f"report: {report_path}")
        if failed:
            print(f"kfm align: {len(failed)} of {c['total']} file(s) not aligned ({_common.reason_counts(failed)}); "
                  f"see {report_path}", file=sys.stderr)
    return _common.EXIT_CHECK_FAILED if args.strict and c["aligned"] < c["total"] else _common.EXIT_OK
