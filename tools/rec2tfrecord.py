#!/usr/bin/env python
"""Convert an insightface RecordIO set to sharded TFRecord files.

A thin wrapper kept for old commands; the command is ``kfm data rec2tfrecord``
(installed with the package, see
``kfm data rec2tfrecord --help``).
This file runs ``keras_facemargin.cli.main(["data", "rec2tfrecord", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["data", "rec2tfrecord", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
