#!/usr/bin/env python
"""Pack an identity-per-folder image tree into an insightface RecordIO set.

Writes ``<out>/train.rec``, ``train.idx`` and ``property`` in the
``faces_emore`` layout (header record, image records, identity records) that
:class:`keras_facemargin.data.RecordIOReader` and insightface's
``MXFaceDataset`` both read. JPEG files are stored as they are unless
``--image-size`` or ``--reencode`` asks for re-encoding; other formats are
re-encoded as JPEG. Without ``--image-size`` every image is decoded first and
must have the first image's size: an undecodable image or one of another size
stops the tool with an error naming the file (no partial set is left). With
``--image-size`` images are resized and undecodable files are skipped (listed).

Example::

    python tools/folder2rec.py faces_aligned/ out/faces_rec --image-size 112
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

try:
    import keras_facemargin  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_facemargin.data.folders import scan_image_folder
from keras_facemargin.data.recordio import write_recordio


class _BadInput(Exception):
    """An input image that would become a bad record: stop before writing more."""


def _items(paths, labels, size, reencode, quality, skipped, expected_hw=None):
    """``(label, encoded)`` per image. Without ``size`` every image is decoded and must have
    ``expected_hw`` (the first image's size); with ``size`` undecodable files are skipped."""
    for path, label in zip(paths, labels):
        with open(path, "rb") as f:
            data = f.read()
        is_jpeg = data[:3] == b"\xff\xd8\xff"
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
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
        elif img.shape[:2] != size:
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise _BadInput(f"JPEG encoding of {path} failed (OpenCV imencode returned False).")
        yield int(label), buf.tobytes()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder with one sub-folder of images per identity")
    ap.add_argument("out", help="output folder for train.rec / train.idx / property")
    ap.add_argument("--image-size", type=int, nargs="+", default=None,
                    help="resize to SIZE or H W (default: keep; property uses the first image)")
    ap.add_argument("--reencode", action="store_true", help="re-encode JPEGs too")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality when encoding (default 95)")
    args = ap.parse_args(argv)
    size = None
    if args.image_size:
        if len(args.image_size) not in (1, 2):
            ap.error("--image-size takes SIZE or H W")
        size = tuple(args.image_size * 2 if len(args.image_size) == 1 else args.image_size)
    paths, labels, names = scan_image_folder(args.root)
    prop_size = size
    if prop_size is None:
        first = cv2.imdecode(np.fromfile(paths[0], np.uint8), cv2.IMREAD_COLOR)
        if first is None:
            ap.error(f"cannot decode {paths[0]} to find the image size; pass --image-size")
        prop_size = first.shape[:2]
    skipped = []
    items = _items(paths, labels, size, args.reencode, args.quality, skipped,
                   expected_hw=None if size is not None else prop_size)
    try:
        with tqdm(total=len(paths), unit="img", desc="folder2rec") as bar:
            info = write_recordio(args.out, items, image_size=prop_size, num_classes=len(names),
                                  progress=bar.update)
    except _BadInput as err:
        for name in ("train.rec", "train.idx", "property"):  # the partial set is unusable
            (Path(args.out) / name).unlink(missing_ok=True)
        ap.error(f"{err} Nothing written to {args.out}.")
    print(f"wrote {info['num_images']} images of {info['num_classes']} identities to {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} undecodable file(s), e.g. {skipped[:3]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
