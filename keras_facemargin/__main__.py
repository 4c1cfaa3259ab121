"""``python -m keras_facemargin ...``: the ``kfm`` command (:mod:`keras_facemargin.cli`).

Example::

    python -m keras_facemargin verify a.jpg b.jpg --json
"""

import sys

from keras_facemargin.cli import main

if __name__ == "__main__":
    sys.exit(main())
