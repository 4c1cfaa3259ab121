#!/usr/bin/env python
"""Package a trained run as a shipped model: weights file, sha256, LFW accuracy, thresholds, TFLite parity.

A thin wrapper kept for old commands; the command is ``kfm package`` (installed with the package,
see ``kfm package --help``). This file runs ``kfm package --output <checkout>/pretrained ...`` so
that the report lands in the checkout's ``pretrained/`` folder, as it always did.

    python tools/package_model.py runs/real_faces/<run>/model.keras --name arcface_celeba_mbf
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["package", "--output", os.path.join(ROOT, "pretrained"), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
