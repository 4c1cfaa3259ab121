#!/usr/bin/env python
"""Are the faces of two photos the same person? Prints one JSON object.

Detects the face of each photo with MTCNN, aligns it to the ArcFace 112x112 template, embeds it
(flip sum) and compares the cosine similarity to a threshold: same person iff ``score > threshold``
(:class:`keras_facemargin.FaceVerifier`). The threshold is ``--threshold``, else the model's
LFW-calibrated threshold at ``--far`` from the registry.

Example::

    python tools/verify_faces.py a.jpg b.jpg
    python tools/verify_faces.py a.jpg b.jpg --model arcface_r50 --weights backbone.pth --far 1e-2
    python tools/verify_faces.py a.jpg b.jpg --model runs/demo/model.keras --threshold 0.3

Output (stdout): ``{"status": "ok", "score", "same", "threshold", "far", "threshold_source", "model",
"faces": [{"source", "box", "confidence", "landmarks", ...}, {...}]}``, or
``{"status": "error", "error": REASON, "file", "message"}``.

Exit status: 0 on a decision (same or not), 2 bad arguments / model / no threshold, 3 no face found,
4 several faces with ``--face-policy error``, 5 unreadable or not an image (or missing file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_verifier(args):
    """A FaceVerifier from the shared --model / --weights / --threshold / --far / --face-policy options."""
    from keras_facemargin.data.align import MTCNNDetector
    from keras_facemargin.inference.verifier import FaceVerifier

    # the default detector is created on first use (errors about the model come first)
    detector = MTCNNDetector(min_confidence=args.min_confidence) if args.min_confidence > 0 else None
    return FaceVerifier(args.model, threshold=args.threshold, far=args.far, detector=detector,
                        face_policy=args.face_policy, weights=args.weights)


def add_model_arguments(parser):
    """The options shared with tools/identify.py."""
    parser.add_argument("--model", default=None,
                        help="registry name (see keras_facemargin.list_models()) or a .keras file; "
                             "default: the shipped model (registry DEFAULT_MODEL)")
    parser.add_argument("--weights", default=None, help="local weights file for a registry --model")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine threshold (same iff score > T); default: the model's calibrated one at --far")
    parser.add_argument("--far", type=float, default=1e-3,
                        help="false accept rate of the calibrated threshold (default 1e-3)")
    parser.add_argument("--face-policy", default="central", choices=["central", "largest", "best", "error"],
                        help="face to use when a photo has several: large-and-central (default), largest box, "
                             "best detector confidence, or error (refuse)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="ignore detections below this MTCNN confidence (default 0)")
    parser.add_argument("--include-crops", action="store_true",
                        help="add each aligned crop as a base64 PNG (crop_png_base64) to the JSON")


def emit(obj) -> None:
    print(json.dumps(obj, indent=2))


def emit_error(error) -> int:
    """Print the JSON report of an error the photo CLIs report and return its exit code; re-raise any other.

    Verifier outcomes (no face, several faces, unreadable, gallery mismatch) carry their own dict and
    code; a model or argument problem (weights, missing file, bad value) is a configuration error, 2.
    """
    from keras_facemargin.inference.verifier import FaceVerifierError
    from keras_facemargin.pretrained.loader import PretrainedWeightsError

    if isinstance(error, FaceVerifierError):
        emit(error.to_dict())
        return error.exit_code
    if isinstance(error, (PretrainedWeightsError, FileNotFoundError, ValueError)):
        emit({"status": "error", "error": "configuration", "file": None, "message": str(error)})
        return 2
    raise error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_a", help="first photo (JPEG, PNG, ...)")
    parser.add_argument("image_b", help="second photo")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        verifier = build_verifier(args)
        result = verifier.verify(args.image_a, args.image_b)
    except Exception as e:
        return emit_error(e)
    emit(result.to_dict(include_crops=args.include_crops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
