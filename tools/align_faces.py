#!/usr/bin/env python
"""Align a folder of raw face photos to ArcFace-template crops.

A thin wrapper kept for old commands; the command is ``kfm align``
(installed with the package, see
``kfm align --help``).
This file runs ``keras_facemargin.cli.main(["align", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["align", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
