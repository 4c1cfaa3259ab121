#!/usr/bin/env python
"""Convert an insightface IResNet / MobileFaceNet checkpoint (.onnx, .pth or a training checkpoint) to
Keras weights, checking parity.

A thin wrapper kept for old commands; the command is ``kfm convert``
(installed with the package, see
``kfm convert --help``).
This file runs ``keras_facemargin.cli.main(["convert", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
