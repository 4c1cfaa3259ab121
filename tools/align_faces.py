#!/usr/bin/env python
"""Align a folder of raw face photos to ArcFace-template crops.

Turns ``RAW_DIR/<identity>/*.jpg`` into ``ALIGNED_DIR/<identity>/*.jpg`` (same relative
paths) with 5-point similarity alignment to the insightface ArcFace template
(:mod:`keras_facemargin.data.align`). Landmarks come from ``--landmarks FILE``
(lines ``path x1 y1 ... x5 y5``, paths relative to RAW_DIR; order left eye, right eye,
nose, left mouth, right mouth, image-left first) or from the ``mtcnn`` package
(``pip install 'mtcnn==1.0.0'``). With several faces the large-and-central one is
aligned (facenet's rule: max ``w*h - 2*||box centre - image centre||^2``) and the file
is also listed under ``multiple_faces``.

Every input file appears in exactly one of ``aligned`` / ``no_face`` / ``unreadable`` in
the report, printed as a summary and written as JSON (default ``ALIGNED_DIR/align_report.json``).

Example::

    python tools/align_faces.py --input raw/ --output aligned/ --size 112
    python tools/align_faces.py --input raw/ --output aligned/ --landmarks landmarks.txt

Exit status: 0 on success (even if some files failed; see the report), 1 with
``--strict`` when any file was not aligned, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of raw photos (<identity>/*.jpg)")
    parser.add_argument("--output", required=True, help="destination folder (same structure)")
    parser.add_argument("--landmarks", default=None, help="landmarks file; default: detect with mtcnn")
    parser.add_argument("--size", type=int, default=112, help="output side in pixels (default 112)")
    parser.add_argument("--method", default="lstsq", choices=["lstsq", "lmeds", "ransac"],
                        help="similarity estimator (default lstsq = insightface)")
    parser.add_argument("--ext", default=None, help="output extension, e.g. .png (default: keep)")
    parser.add_argument("--report", default=None, help="JSON report path (default OUTPUT/align_report.json)")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="MTCNN confidence threshold")
    parser.add_argument("--batch-size", type=int, default=16, help="MTCNN batch size (same-shape images)")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any file was not aligned")
    args = parser.parse_args(argv)
    if args.size <= 0:
        parser.error(f"--size must be positive, got {args.size}")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_facemargin.data.align import MTCNNDetector, align_folder, write_report

    detector = None
    if args.landmarks is None:
        detector = MTCNNDetector(batch_size=args.batch_size, min_confidence=args.min_confidence)
    try:
        report = align_folder(args.input, args.output, landmarks=args.landmarks, image_size=args.size,
                              detector=detector, method=args.method, output_ext=args.ext,
                              progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report_path = args.report or os.path.join(args.output, "align_report.json")
    write_report(report, report_path)
    c = report["counts"]
    print(f"total {c['total']}: aligned {c['aligned']}, no face {c['no_face']}, unreadable {c['unreadable']} "
          f"(multiple faces {c['multiple_faces']})")
    for item in report["no_face"]:
        print(f"  no face:    {item['path']} ({item['reason']})")
    for item in report["unreadable"]:
        print(f"  unreadable: {item['path']} ({item['error']})")
    for item in report["multiple_faces"]:
        print(f"  multiple:   {item['path']} ({item['num_faces']} faces, kept #{item['chosen']})")
    if report["unused_landmarks"]:
        print(f"  {len(report['unused_landmarks'])} landmark entries match no input file")
    print(f"report: {report_path}")
    return 1 if args.strict and c["aligned"] < c["total"] else 0


if __name__ == "__main__":
    sys.exit(main())
