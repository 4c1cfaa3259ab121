#!/usr/bin/env python
"""IJB-B / IJB-C 1:1 template verification (TAR@FAR 1e-6..1e-1) and 1:N identification.

A thin wrapper kept for old commands; the command is ``kfm evaluate ijb``
(installed with the package, see
``kfm evaluate ijb --help``).
This file runs ``keras_facemargin.cli.main(["evaluate", "ijb", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["evaluate", "ijb", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
