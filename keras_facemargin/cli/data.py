"""`kfm data folder2rec|rec2tfrecord`: convert training sets (image folders, RecordIO, TFRecord).

* ``folder2rec ROOT OUT``: pack an identity-per-folder image tree into an insightface RecordIO set
  (``OUT/train.rec``, ``train.idx`` and ``property`` in the ``faces_emore`` layout that
  :class:`keras_facemargin.data.RecordIOReader` and insightface's ``MXFaceDataset`` both read).
  JPEG files are stored as they are unless ``--image-size`` or ``--reencode`` asks for re-encoding;
  other formats are re-encoded as JPEG. Without ``--image-size`` every image is decoded first and
  must have the first image's size: an undecodable image or one of another size stops with an
  error naming the file (no partial set is left). With ``--image-size`` images are resized and
  undecodable files are skipped (listed).
* ``rec2tfrecord REC OUT_PREFIX``: an insightface RecordIO set to sharded TFRecord files. Each image
  becomes a ``tf.train.Example`` with ``image/encoded`` (the stored bytes, not re-encoded),
  ``image/label`` and ``image/index`` (its position in the RecordIO set). Corrupt records (header
  scan) are skipped and reported.

Example::

    kfm data folder2rec faces_aligned/ out/faces_rec --image-size 112
    kfm data rec2tfrecord faces_emore out/ms1m --num-shards 64
"""

from __future__ import annotations

import sys
from pathlib import Path

from keras_facemargin.cli import _common

__all__ = ["register", "run_folder2rec", "run_rec2tfrecord"]


def register(sub) -> None:
    """Add ``data folder2rec|rec2tfrecord`` to the ``kfm`` sub-parsers."""
    common = _common.common_options()
    p = _common.add_parser(sub, "data", __doc__, [], help="convert training sets: folders, RecordIO, TFRecord")
    kinds = p.add_subparsers(dest="conversion", metavar="CONVERSION", required=True)
    f = _common.add_parser(kinds, "folder2rec", __doc__, [common], help="image folders -> insightface RecordIO")
    f.add_argument("root", help="folder with one sub-folder of images per identity")
    f.add_argument("out", help="output folder for train.rec / train.idx / property")
    f.add_argument("--image-size", type=int, nargs="+", default=None,
                   help="resize to SIZE or H W (default: keep; property uses the first image)")
    f.add_argument("--reencode", action="store_true", help="re-encode JPEGs too")
    f.add_argument("--quality", type=int, default=95, help="JPEG quality when encoding (default 95)")
    f.set_defaults(func=run_folder2rec, parser=f)
    r = _common.add_parser(kinds, "rec2tfrecord", __doc__, [common], help="insightface RecordIO -> TFRecord shards")
    r.add_argument("rec", help="folder with train.rec/train.idx/property, or a .rec path")
    r.add_argument("out_prefix", help="output prefix, e.g. out/train -> out/train-00000-of-00008.tfrecord")
    r.add_argument("--num-shards", type=int, default=8, help="number of output files (default 8)")
    r.set_defaults(func=run_rec2tfrecord)


class _BadInput(Exception):
    """An input image that would become a bad record: stop before writing more."""


def _items(paths, labels, size, reencode, quality, skipped, expected_hw=None):
    """``(label, encoded)`` per image. Without ``size`` every image is decoded and must have
    ``expected_hw`` (the first image's size); with ``size`` undecodable files are skipped."""
    import cv2

    from keras_facemargin.utils.images import decode_image, resize_image

    for path, label in zip(paths, labels):
        with open(path, "rb") as f:
            data = f.read()
        is_jpeg = data[:3] == b"\xff\xd8\xff"
        img, _ = decode_image(data, rgb=False)  # BGR, as cv2.imencode takes it
        if img is None:
            if size is None:
                raise _BadInput(f"cannot decode {path}; remove it, or pass --image-size (undecodable "
                                "files are then skipped).")
            skipped.append(path)
            continue
        if size is None:
            if expected_hw is not None and img.shape[:2] != tuple(expected_hw):
                raise _BadInput(f"{path} is {img.shape[0]}x{img.shape[1]} but the first image {paths[0]} "
                                f"is {expected_hw[0]}x{expected_hw[1]}; pass --image-size to resize all.")
            if is_jpeg and not reencode:
                yield int(label), data
                continue
        else:
            img = resize_image(img, size)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise _BadInput(f"JPEG encoding of {path} failed (OpenCV imencode returned False).")
        yield int(label), buf.tobytes()


def run_folder2rec(args) -> int:
    """Pack ``args.root`` into ``args.out``; a bad input image is a usage error (nothing is left written)."""
    from keras_facemargin.data import scan_image_folder, write_recordio
    from keras_facemargin.utils.images import read_image_file

    ap = args.parser
    size = None
    if args.image_size:
        if len(args.image_size) not in (1, 2):
            ap.error("--image-size takes SIZE or H W")
        size = tuple(args.image_size * 2 if len(args.image_size) == 1 else args.image_size)
    paths, labels, names = scan_image_folder(args.root)
    prop_size = size
    if prop_size is None:
        first, _ = read_image_file(paths[0], rgb=False)
        if first is None:
            ap.error(f"cannot decode {paths[0]} to find the image size; pass --image-size")
        prop_size = first.shape[:2]
    skipped = []
    items = _items(paths, labels, size, args.reencode, args.quality, skipped,
                   expected_hw=None if size is not None else prop_size)
    try:
        with _common.progress_bar(args, len(paths), "folder2rec") as bar:
            info = write_recordio(args.out, items, image_size=prop_size, num_classes=len(names),
                                  progress=bar.update)
    except _BadInput as err:
        for name in ("train.rec", "train.idx", "property"):  # the partial set is unusable
            (Path(args.out) / name).unlink(missing_ok=True)
        ap.error(f"{err} Nothing written to {args.out}.")
    print(f"wrote {info['num_images']} images of {info['num_classes']} identities to {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} undecodable file(s), e.g. {skipped[:3]}", file=sys.stderr)
    return _common.EXIT_OK


def run_rec2tfrecord(args) -> int:
    """Convert ``args.rec`` to ``args.num_shards`` TFRecord files."""
    import numpy as np

    from keras_facemargin.data import RecordIOReader, write_tfrecords

    with RecordIOReader(args.rec) as reader:  # closes the memory map and file
        scan = reader.scan()
        valid = np.flatnonzero(scan["valid"])
        if scan["bad"]:
            print(f"skipping {len(scan['bad'])} bad record(s); first: {scan['bad'][0]}", file=sys.stderr)

        def items():
            for pos in valid:
                label, data = reader.read(int(reader.keys[pos]))
                yield int(pos), label, data

        with _common.progress_bar(args, valid.size, "rec2tfrecord") as bar:
            files = write_tfrecords(args.out_prefix, items(), num_shards=args.num_shards, progress=bar.update)
        print(f"wrote {valid.size} images ({reader.num_classes} classes) to {len(files)} file(s): {files[0]} ...")
    return _common.EXIT_OK
