"""Writer of insightface ``faces_emore``-layout RecordIO sets (``train.rec``, ``train.idx``, ``property``).

Example::

    write_recordio("out", [(0, jpg_a), (0, jpg_b), (1, jpg_c)], image_size=(112, 112))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_facemargin.data.formats.recordio.records import _has_image_signature, _pack_payload, pack_record
from keras_facemargin.utils.atomic import atomic_write_text, atomic_writer

__all__ = ["write_recordio"]


def write_recordio(out_dir, items, image_size=None, num_classes=None, progress=None) -> dict:
    """Write an insightface ``faces_emore``-layout RecordIO set.

    Writes ``train.rec``, ``train.idx`` and ``property`` with the header record
    (key 0), image records (keys ``1..N``) and identity records (keys
    ``N+1..N+C``), readable by :class:`RecordIOReader` and by insightface's
    ``MXFaceDataset`` / ``mx.recordio.MXIndexedRecordIO``.

    Args:
        out_dir: output folder (created).
        items: iterable of ``(label, encoded_image_bytes)`` with labels grouped
            by class in non-decreasing order (insightface identities are
            contiguous key ranges).
        image_size: ``(height, width)`` written to ``property``; required.
        num_classes: number of classes (default: last label + 1). Classes
            without images get an empty identity range.
        progress: optional callable ``progress(n)`` called after each image
            (e.g. ``tqdm.update``).

    Each of the three files is written atomically (:mod:`keras_facemargin.utils.atomic`), in
    the order ``train.rec``, ``train.idx``, ``property``; a crash while writing ``train.rec``
    leaves the folder as it was.

    Returns:
        ``{"num_images", "num_classes", "counts"}``.

    Example::

        write_recordio("out", [(0, jpg_a), (0, jpg_b), (1, jpg_c)], image_size=(112, 112))
    """
    if image_size is None or len(tuple(image_size)) != 2:
        raise ValueError(f"`image_size` must be (height, width), got {image_size!r}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = []
    idx_lines = []
    key = 0
    with atomic_writer(out_dir / "train.rec", "wb") as f:
        # Header placeholder; the header record has a fixed size, rewritten at the end.
        f.write(pack_record(_pack_payload([0.0, 0.0], 0, 0, 0)))
        idx_lines.append("0\t0")
        prev = -1
        for label, data in items:
            label = int(label)
            if label < prev:
                raise ValueError(
                    f"`items` must be grouped by class in non-decreasing label order; got label "
                    f"{label} after {prev} (image key {key + 1})."
                )
            if label < 0:
                raise ValueError(f"Labels must be >= 0, got {label}.")
            data = bytes(data)
            if not _has_image_signature(data[:4]):
                raise ValueError(f"Image of key {key + 1} (label {label}) is not an encoded image.")
            while len(counts) <= label:
                counts.append(0)
            counts[label] += 1
            prev = label
            key += 1
            idx_lines.append(f"{key}\t{f.tell()}")
            f.write(pack_record(_pack_payload(None, label, key, 0, data)))
            if progress is not None:
                progress(1)
        n = key
        c = len(counts) if num_classes is None else int(num_classes)
        if c < len(counts):
            raise ValueError(f"`num_classes` ({c}) is smaller than the largest label + 1 ({len(counts)}).")
        counts += [0] * (c - len(counts))
        start = 1
        for cls in range(c):
            key += 1
            idx_lines.append(f"{key}\t{f.tell()}")
            f.write(pack_record(_pack_payload([start, start + counts[cls]], 0, key, 0)))
            start += counts[cls]
        f.seek(0)
        f.write(pack_record(_pack_payload([n + 1, n + 1 + c], 0, 0, 0)))
    atomic_write_text(out_dir / "train.idx", "\n".join(idx_lines) + "\n")
    h, w = (int(v) for v in image_size)
    atomic_write_text(out_dir / "property", f"{c},{h},{w}")
    return {"num_images": n, "num_classes": c, "counts": np.asarray(counts, np.int64)}
