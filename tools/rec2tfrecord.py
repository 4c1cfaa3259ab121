#!/usr/bin/env python
"""Convert an insightface RecordIO set to sharded TFRecord files.

Each image becomes a ``tf.train.Example`` with ``image/encoded`` (the stored
bytes, not re-encoded), ``image/label`` and ``image/index`` (its position in
the RecordIO set, i.e. the same sample index as the RecordIO pipeline).
Corrupt records (header scan) are skipped and reported.

Example::

    python tools/rec2tfrecord.py faces_emore out/ms1m --num-shards 64
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:
    import keras_facemargin  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_facemargin.data.recordio import RecordIOReader
from keras_facemargin.data.tfrecord import write_tfrecords


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rec", help="folder with train.rec/train.idx/property, or a .rec path")
    ap.add_argument("out_prefix", help="output prefix, e.g. out/train -> out/train-00000-of-00008.tfrecord")
    ap.add_argument("--num-shards", type=int, default=8, help="number of output files (default 8)")
    args = ap.parse_args(argv)
    with RecordIOReader(args.rec) as reader:  # closes the memory map and file
        scan = reader.scan()
        valid = np.flatnonzero(scan["valid"])
        if scan["bad"]:
            print(f"skipping {len(scan['bad'])} bad record(s); first: {scan['bad'][0]}", file=sys.stderr)

        def items():
            for pos in valid:
                label, data = reader.read(int(reader.keys[pos]))
                yield int(pos), label, data

        with tqdm(total=valid.size, unit="img", desc="rec2tfrecord") as bar:
            files = write_tfrecords(args.out_prefix, items(), num_shards=args.num_shards,
                                    progress=bar.update)
        print(f"wrote {valid.size} images ({reader.num_classes} classes) to {len(files)} file(s): "
              f"{files[0]} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
