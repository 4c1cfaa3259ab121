"""MXNet RecordIO framing and the image-record payload, shared by the reader and the writer.

Record (dmlc/MXNet RecordIO), all integers little-endian::

    uint32 magic = 0xced7230a
    uint32 lrec  = cflag << 29 | length        # length = payload bytes (< 2**29)
    payload[length], then zero padding to a multiple of 4 bytes

``cflag`` is 0 for a whole record. The writer splits a payload wherever the
magic appears at a 4-byte-aligned position: parts are written with
``cflag`` 1 (first), 2 (middle), 3 (last) and the magic itself is dropped, so
the payload is the parts joined by the 4 magic bytes. The reader rejoins them.

Payload (``mx.recordio.pack``)::

    IRHeader "<IfQQ": uint32 flag, float32 label, uint64 id, uint64 id2
    if flag > 0: float32 labels[flag]   (header.label is then 0)
    encoded image bytes (JPEG in insightface sets)

Example::

    payload = _pack_payload(None, 3, 1, 0, jpeg_bytes)   # IRHeader(flag=0, label=3.0, id=1) + image
    rec = pack_record(payload)                           # bytes to append to train.rec
"""

from __future__ import annotations

import struct
from collections import namedtuple

import numpy as np

__all__ = ["MAGIC", "IRHeader", "pack_record"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = """MXNet image-record header. ``label`` is a float, or a float32 array when ``flag > 0``."""


def _has_image_signature(head: bytes) -> bool:
    """JPEG, PNG, BMP or WebP signature at the start of ``head``."""
    return (head[:3] == b"\xff\xd8\xff" or head[:4] == b"\x89PNG" or head[:2] == b"BM"
            or head[:4] == b"RIFF")


def pack_record(payload: bytes) -> bytes:
    """Frame ``payload`` as one MXNet RecordIO record (split into parts as MXNet does).

    Args:
        payload: record payload (IRHeader + labels + image bytes).

    Returns:
        The bytes to append to a ``.rec`` file (a multiple of 4 bytes long).

    Example::

        rec = pack_record(struct.pack("<IfQQ", 0, 3.0, 1, 0) + jpeg_bytes)
    """
    if len(payload) > _LEN_MASK:
        raise ValueError(f"Record payload of {len(payload)} bytes exceeds the 2**29-1 limit.")
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == _MAGIC_BYTES]
    out = []
    start = 0
    for n, i in enumerate(cuts):
        out.append((1 if n == 0 else 2, payload[start:i]))
        start = i + 4
    out.append((3 if cuts else 0, payload[start:]))
    chunks = []
    for cflag, part in out:
        chunks.append(struct.pack("<II", MAGIC, (cflag << 29) | len(part)))
        chunks.append(part)
        chunks.append(b"\0" * (-len(part) % 4))
    return b"".join(chunks)


def _pack_payload(flag_labels, label, id_, id2, data=b""):
    """IRHeader (``flag_labels`` None: one float ``label``; else ``flag = len(flag_labels)``) + ``data``."""
    if flag_labels is None:
        return struct.pack(_IR_FORMAT, 0, float(label), int(id_), int(id2)) + data
    lab = np.asarray(flag_labels, np.float32).ravel()
    return struct.pack(_IR_FORMAT, lab.size, 0.0, int(id_), int(id2)) + lab.tobytes() + data
