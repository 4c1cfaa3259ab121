#!/usr/bin/env python
"""Export a face model's embedder to SavedModel / TFLite / ONNX and check parity with Keras.

A thin wrapper kept for old commands; the command is ``kfm export``
(installed with the package, see
``kfm export --help``).
This file runs ``keras_facemargin.cli.main(["export", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
