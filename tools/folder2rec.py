#!/usr/bin/env python
"""Pack an identity-per-folder image tree into an insightface RecordIO set.

A thin wrapper kept for old commands; the command is ``kfm data folder2rec``
(installed with the package, see
``kfm data folder2rec --help``).
This file runs ``keras_facemargin.cli.main(["data", "folder2rec", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
import cv2  # noqa: E402,F401  (tests patch folder2rec.cv2.imencode)
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["data", "folder2rec", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
