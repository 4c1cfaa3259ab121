#!/usr/bin/env python
"""Are the faces of two photos the same person? Prints one JSON object (``kfm verify --json``; FAR 1e-3
threshold by default, as this tool always had).

A thin wrapper kept for old commands; the command is ``kfm verify``
(installed with the package, see
``kfm verify --help``).
This file runs ``keras_facemargin.cli.main(["verify", "--json", "--far", "1e-3", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["verify", "--json", "--far", "1e-3", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
