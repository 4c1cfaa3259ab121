#!/usr/bin/env python
"""Who is in the photo? Matches its face against a gallery; prints one JSON object per photo (``kfm
identify --json``; ``--gallery DIR_OR_NPZ`` as before; FAR 1e-3 threshold by default, as this tool
always had).

A thin wrapper kept for old commands; the command is ``kfm identify``
(installed with the package, see
``kfm identify --help``).
This file runs ``keras_facemargin.cli.main(["identify", "--json", "--far", "1e-3", *argv])``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
from keras_facemargin.cli import main as kfm  # noqa: E402


def main(argv=None):
    return kfm(["identify", "--json", "--far", "1e-3", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
