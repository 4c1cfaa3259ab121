"""Random-access, validating reader of insightface RecordIO sets (no MXNet needed).

The training *sample index* (``index`` in the pipeline elements, KappaFace's
memory slot) is the position of an image in :attr:`RecordIOReader.keys`:
``0 .. num_images-1``, stable across epochs and independent of corrupt
records (a skipped record's index is simply never produced).

Every record's framing, header, label and image signature is checked by a vectorised scan
of the memory-mapped headers (:meth:`RecordIOReader.scan`, no image decode).

Example::

    r = RecordIOReader("faces_emore")
    label, jpeg = r.read(r.keys[0])
    counts = r.class_counts()
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from keras_facemargin.data.errors import BadRecordError
from keras_facemargin.data.formats.recordio.records import (
    _IR_FORMAT,
    _IR_SIZE,
    _LEN_MASK,
    _MAGIC_BYTES,
    MAGIC,
    IRHeader,
    _has_image_signature,
)
from keras_facemargin.errors import RecordIOError, RecordIORecordError
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels

__all__ = ["RecordIOReader", "RecordIOError", "RecordIORecordError", "DEFAULT_MIN_MAX_CLASSES"]

#: ``max_classes`` default: this many, or the number of ``.idx`` entries when larger.
DEFAULT_MIN_MAX_CLASSES = 1 << 20

# Scan reason codes.
_OK, _TRUNC, _MAGIC_BAD, _CFLAG, _SHORT, _IMAGE, _LABEL, _OVERLAP = range(8)
_REASONS = {_TRUNC: "truncated", _MAGIC_BAD: "bad_magic", _CFLAG: "bad_cflag",
            _SHORT: "short_record", _IMAGE: "bad_image", _LABEL: "bad_label", _OVERLAP: "overlap"}
_IDX_BYTES = np.zeros(256, bool)
_IDX_BYTES[list(b"0123456789+- \t\r\n")] = True


def _resolve_paths(path):
    p = Path(path)
    if p.is_dir():
        rec, idx = p / "train.rec", p / "train.idx"
    elif p.suffix == ".rec":
        rec, idx = p, p.with_suffix(".idx")
    elif p.suffix == ".idx":
        rec, idx = p.with_suffix(".rec"), p
    elif not p.exists():
        raise FileNotFoundError(
            f"RecordIO path {str(p)!r} does not exist; expected a folder holding train.rec, "
            "train.idx (and property), or the path of a .rec file next to its .idx."
        )
    else:
        raise ValueError(
            f"RecordIO path {str(p)!r} is neither a folder nor a .rec/.idx file; expected a folder "
            "holding train.rec, train.idx (and property), or a .rec path."
        )
    missing = [str(x) for x in (rec, idx) if not x.is_file()]
    if missing:
        raise FileNotFoundError(
            f"RecordIO set at {str(p)!r} is incomplete: missing {', '.join(missing)} "
            "(expected train.rec + train.idx, and optionally property)."
        )
    prop = rec.parent / "property"
    return rec, idx, (prop if prop.is_file() else None)


class RecordIOReader:
    """Random-access reader of an insightface RecordIO set (no MXNet needed).

    Every field read from the three files is checked before it sizes an allocation or a loop:
    ``.idx`` lines are exactly two integers, keys unique and >= 0, byte offsets unique (two keys
    never share a record); the header record's range must be covered by the ``.idx``; labels
    are integers in ``[0, num_classes)`` (``num_classes`` from ``property`` or the identity
    records, at most ``max_classes``); identity ranges lie inside the image keys; a record may
    not run into the next indexed record (so reading every record touches each byte of
    ``train.rec`` once: the scan is O(n log n)). Images are checked against
    ``max_image_pixels`` from their header before decoding.

    Args:
        path: folder holding ``train.rec``, ``train.idx`` (and ``property``), or
            the ``.rec`` path (its ``.idx`` must sit next to it).
        max_classes: largest admitted class count / label + 1 (default: the larger of
            :data:`DEFAULT_MIN_MAX_CLASSES` and the number of ``.idx`` entries).
        max_image_pixels: largest ``height * width`` of an image (``property`` size included).

    Attributes:
        rec_path, idx_path, property_path: the files (``property_path`` may be ``None``).
        keys: int64 image keys; position ``i`` is training sample ``index == i``.
        num_images: ``len(keys)``.
        num_classes: from ``property``, else the identity records, else the labels.
        image_size: ``(height, width)`` from ``property``, or ``None``.
        identity_keys: int64 keys of the identity records (empty when absent).
        max_image_pixels: the cap used by :func:`make_dataset` for this reader.

    Raises:
        OSError: a missing or unreadable file (``FileNotFoundError`` names what is missing).
        RecordIOError: malformed ``.idx`` / ``property``, a header or identity record that does
            not match the ``.idx``, or a limit exceeded (message names the file and line / key).
        RecordIORecordError: (a :class:`BadRecordError` too) a corrupt record met at open
            (the header record) or by :meth:`read` / :meth:`header`; :meth:`scan` collects
            them instead of raising.

    Example::

        r = RecordIOReader("faces_emore")
        label, jpeg = r.read(r.keys[0])
        counts = r.class_counts()
    """

    def __init__(self, path, max_classes=None, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.rec_path, self.idx_path, self.property_path = _resolve_paths(path)
        self.max_image_pixels = check_max_pixels(max_image_pixels)
        if max_classes is not None and (isinstance(max_classes, bool) or not isinstance(
                max_classes, (int, np.integer)) or max_classes < 1):
            raise ValueError(f"`max_classes` must be None or a positive integer, got {max_classes!r}.")
        self._max_classes_arg = max_classes
        self._mm = None
        self._buf = None
        self._scan_result = None
        self._file = open(self.rec_path, "rb")
        try:
            self.file_size = os.fstat(self._file.fileno()).st_size
            if self.file_size == 0:
                raise RecordIOError(self.rec_path, "the file is empty")
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._buf = np.frombuffer(self._mm, np.uint8)
            self._read_idx()
            self._read_property()
            self._read_layout()
        except BaseException:
            self.close()  # no file handle / memory map leaks from a failed open
            raise

    # ---------------------------------------------------------------- setup
    def _idx_lines(self, data):
        """``(line number, fields)`` of the non-blank lines (error path only)."""
        for lineno, line in enumerate(data.split(b"\n"), 1):
            fields = line.split()
            if fields:
                yield lineno, fields

    def _idx_error(self, data, detail):
        for lineno, fields in self._idx_lines(data):
            text = b" ".join(fields).decode("ascii", "replace")[:80]
            if len(fields) != 2:
                return RecordIOError(self.idx_path, f"malformed index file: expected 'key<TAB>offset', got "
                                     f"{len(fields)} field(s) "
                                     f"{text!r}", f"line {lineno}")
            for v in fields:
                try:
                    ok = -(2**63) <= int(v) < 2**63
                except ValueError:
                    ok = False
                if not ok:
                    shown = v.decode("ascii", "replace")[:40]
                    return RecordIOError(self.idx_path, f"malformed index file: {shown!r} "
                                         "is not an int64 integer (expected 'key<TAB>offset')", f"line {lineno}")
        return RecordIOError(self.idx_path, f"malformed index file: {detail}")

    def _idx_line_of_row(self, data, row):
        for k, (lineno, _) in enumerate(self._idx_lines(data)):
            if k == row:
                return lineno
        return None  # pragma: no cover

    def _read_idx(self):
        data = self.idx_path.read_bytes()
        raw = np.frombuffer(data, np.uint8)
        bad = np.flatnonzero(~_IDX_BYTES[raw])
        if bad.size:
            pos = int(bad[0])
            line = data.count(b"\n", 0, pos) + 1
            raise RecordIOError(self.idx_path, f"malformed index file: byte 0x{data[pos]:02x} at offset {pos} "
                                "cannot be part of 'key<TAB>offset' integer lines", f"line {line}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data"
                vals = np.loadtxt(io.StringIO(data.decode("ascii")), dtype=np.int64, ndmin=2,
                                  comments=None)
        except (ValueError, OverflowError) as e:
            raise self._idx_error(data, f"expected 'key<TAB>offset' integer lines ({e})") from None
        if vals.size == 0:
            raise RecordIOError(self.idx_path, "malformed index file: no 'key<TAB>offset' lines")
        if vals.shape[1] != 2:
            raise self._idx_error(data, f"expected 2 integers per line, got {vals.shape[1]}")
        keys, offsets = vals[:, 0].copy(), vals[:, 1].copy()
        if keys.min() < 0:
            row = int(np.argmin(keys))
            raise RecordIOError(self.idx_path, f"index file lists a negative key {int(keys[row])} (keys are >= 0)",
                                f"line {self._idx_line_of_row(data, row)}")
        self._idx_keys, self._idx_offsets = keys, offsets
        order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[order]
        self._sorted_offsets = offsets[order]
        dup = np.flatnonzero(np.diff(self._sorted_keys) == 0)
        if dup.size:
            raise RecordIOError(self.idx_path, f"index file lists key {self._sorted_keys[dup[0]]} more than once "
                                f"(lines {self._idx_line_of_row(data, int(order[dup[0]]))} and "
                                f"{self._idx_line_of_row(data, int(order[dup[0] + 1]))})")
        by_off = np.argsort(offsets, kind="stable")
        self._offsets_sorted = offsets[by_off]
        dup = np.flatnonzero(np.diff(self._offsets_sorted) == 0)
        if dup.size:
            a, b = int(by_off[dup[0]]), int(by_off[dup[0] + 1])
            raise RecordIOError(self.idx_path, f"index file points keys {int(keys[a])} and {int(keys[b])} at the "
                                f"same byte offset {int(offsets[a])} (each record has one key)",
                                f"lines {self._idx_line_of_row(data, a)} and {self._idx_line_of_row(data, b)}")
        n = int(keys.size)
        self.max_classes = int(self._max_classes_arg) if self._max_classes_arg is not None else \
            max(DEFAULT_MIN_MAX_CLASSES, n)

    def _next_offsets(self, offsets):
        """Byte offset of the next indexed record after each offset (the file size after the last)."""
        pos = np.searchsorted(self._offsets_sorted, offsets, side="right")
        nxt = self._offsets_sorted[np.minimum(pos, self._offsets_sorted.size - 1)]
        return np.where(pos < self._offsets_sorted.size, nxt, self.file_size)

    def _read_property(self):
        self._prop_classes = None
        self.image_size = None
        if self.property_path is None:
            return
        raw = self.property_path.read_bytes()
        try:
            text = raw.decode("ascii")
            parts = text.strip().split(",")
            if len(parts) != 3 or len(text) > 200:
                raise ValueError
            vals = [int(v) for v in parts]
            if min(vals) <= 0:
                raise ValueError
        except ValueError:  # UnicodeDecodeError is a ValueError
            raise RecordIOError(self.property_path, "expected 'num_classes,height,width' (three positive "
                                f"integers), got {raw[:60]!r}") from None
        if vals[0] > self.max_classes:
            raise RecordIOError(self.property_path, f"num_classes {vals[0]:,} exceeds max_classes="
                                f"{self.max_classes:,} (default: the larger of {DEFAULT_MIN_MAX_CLASSES:,} "
                                "and the number of .idx entries)", "num_classes")
        if vals[1] * vals[2] > self.max_image_pixels:
            raise RecordIOError(self.property_path, f"image size {vals[1]}x{vals[2]} exceeds "
                                f"max_image_pixels={self.max_image_pixels:,}", "height,width")
        self._prop_classes = vals[0]
        self.image_size = (vals[1], vals[2])

    def offsets_of(self, keys) -> np.ndarray:
        """Byte offsets in ``train.rec`` of ``keys`` (:class:`RecordIOError`, a ValueError, for keys
        missing from the ``.idx``)."""
        keys = np.asarray(keys, np.int64)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos_c = np.minimum(pos, self._sorted_keys.size - 1)
        bad = self._sorted_keys[pos_c] != keys
        if np.any(bad):
            missing = keys[bad]
            raise RecordIOError(self.idx_path, f"{missing.size} key(s) missing from the index, e.g. "
                                f"{missing[:5].tolist()}")
        return self._sorted_offsets[pos_c]

    @staticmethod
    def _int_label(v):
        """``int(v)`` for a finite float holding an integer, else None."""
        v = float(v)
        return int(v) if np.isfinite(v) and v == np.floor(v) else None

    def _read_layout(self):
        self.identity_keys = np.zeros(0, np.int64)
        self._header0 = None
        self._image_key_end = None
        has0 = self._sorted_keys[0] == 0
        if has0:
            h0 = self.header(0)  # raises RecordIORecordError if record 0 is corrupt
            if h0.flag > 0:
                off0 = int(self.offsets_of([0])[0])
                lab = np.asarray(h0.label).ravel()
                if lab.size < 2:
                    raise RecordIOError(self.rec_path, f"header record (key 0) has flag {h0.flag} but fewer "
                                        "than 2 labels; expected (first identity key, end key)",
                                        f"byte offset {off0}")
                s, e = self._int_label(lab[0]), self._int_label(lab[1])
                n = int(self._idx_keys.size)
                if s is None or e is None or s < 1 or e < s or e > n:
                    raise RecordIOError(self.rec_path, f"header record (key 0) has range ({lab[0]!r}, "
                                        f"{lab[1]!r}); expected integers 1 <= first identity key <= end key "
                                        f"<= {n} (the .idx lists {n} keys, 0 .. end - 1 must all be there)",
                                        f"byte offset {off0}")
                self._header0 = (s, e)
                self._image_key_end = s
                self.keys = np.arange(1, s, dtype=np.int64)
                self.identity_keys = np.arange(s, e, dtype=np.int64)
                self._image_offsets = self.offsets_of(self.keys)
                if self.identity_keys.size:
                    self.offsets_of(self.identity_keys)  # existence check
                if self.identity_keys.size > self.max_classes:
                    raise RecordIOError(self.rec_path, f"{self.identity_keys.size:,} identity records exceed "
                                        f"max_classes={self.max_classes:,}", f"byte offset {off0}")
                return
        # No header record (or key 0 is an ordinary image record, flag == 0, as in a headerless
        # im2rec set): every key of the .idx is an image, key 0 included.
        self.keys = self._idx_keys.astype(np.int64)
        self._image_offsets = self.offsets_of(self.keys)

    def close(self):
        """Release the memory map and file (idempotent; never raises).

        When arrays viewing the memory map (images handed to a pipeline) are still alive, the map
        is released with the last of them instead of raising ``BufferError``.
        """
        self._buf = None
        mm, self._mm = self._mm, None
        try:
            if mm is not None:
                try:
                    mm.close()
                except BufferError:  # views handed out are still alive: they keep the map until freed
                    pass
        finally:
            if getattr(self, "_file", None) is not None:
                self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self):
        return (f"RecordIOReader({str(self.rec_path)!r}, num_images={self.num_images}, "
                f"num_classes={self._prop_classes if self._prop_classes else '?'})")

    @property
    def num_images(self) -> int:
        return int(self.keys.size)

    @property
    def num_classes(self) -> int:
        if self._prop_classes is not None:
            return self._prop_classes
        if self.identity_keys.size:
            return int(self.identity_keys.size)
        lab = self.labels
        valid = lab[lab >= 0]
        return int(valid.max()) + 1 if valid.size else 0

    # ---------------------------------------------------------------- records
    def _read_payload(self, offset: int) -> bytes:
        """Payload of the record starting at ``offset`` (multi-part records rejoined).

        The record may not run into the next indexed record, so the parts walked by all keys
        together are each walked once.
        """
        parts = []
        pos = int(offset)
        size = self.file_size
        limit = int(self._next_offsets(np.array([pos]))[0]) if pos >= 0 else size
        while True:
            if pos < 0 or pos + 8 > size:
                raise RecordIORecordError(self.rec_path, offset, "truncated",
                                          f"record header at byte {pos} lies past the end of the "
                                          f"{size}-byte file")
            if pos + 8 > limit:
                raise RecordIORecordError(self.rec_path, offset, "overlap",
                                          f"record part at byte {pos} runs into the next indexed record "
                                          f"at byte {limit}")
            magic, lrec = struct.unpack_from("<II", self._mm, pos)
            if magic != MAGIC:
                raise RecordIORecordError(self.rec_path, offset, "bad_magic",
                                          f"found 0x{magic:08x} at byte {pos}, expected 0x{MAGIC:08x}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if pos + 8 + length > size:
                raise RecordIORecordError(self.rec_path, offset, "truncated",
                                          f"record part at byte {pos} claims {length} bytes but the file "
                                          f"ends at {size}")
            if pos + 8 + length > limit:
                raise RecordIORecordError(self.rec_path, offset, "overlap",
                                          f"record part at byte {pos} claims {length} bytes, running into "
                                          f"the next indexed record at byte {limit}")
            if (not parts and cflag not in (0, 1)) or (parts and cflag not in (2, 3)):
                raise RecordIORecordError(self.rec_path, offset, "bad_cflag",
                                          f"unexpected continuation flag {cflag} at byte {pos}")
            parts.append(self._mm[pos + 8:pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def _unpack(self, payload: bytes, offset):
        if len(payload) < _IR_SIZE:
            raise RecordIORecordError(self.rec_path, offset, "short_record",
                                      f"payload of {len(payload)} bytes is shorter than the "
                                      f"{_IR_SIZE}-byte IRHeader")
        flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, payload, 0)
        start = _IR_SIZE
        if flag > 0:
            start += 4 * flag
            if start > len(payload):
                raise RecordIORecordError(self.rec_path, offset, "short_record",
                                          f"IRHeader declares {flag} labels but the payload has "
                                          f"{len(payload)} bytes")
            label = np.frombuffer(payload, np.float32, flag, _IR_SIZE).copy()
        return IRHeader(flag, label, id_, id2), payload[start:]

    def header(self, key) -> IRHeader:
        """The :data:`IRHeader` of record ``key`` (``label`` is an array when ``flag > 0``)."""
        off = int(self.offsets_of([key])[0])
        return self._unpack(self._read_payload(off), off)[0]

    def _label_limit(self):
        n = self._known_num_classes()
        return self.max_classes if n is None else n

    def _check_label(self, label, offset):
        lab = float(np.asarray(label).ravel()[0]) if np.ndim(label) else float(label)
        n = self._label_limit()
        if not (np.isfinite(lab) and lab == np.floor(lab) and 0 <= lab < min(n, 2**31)):
            raise RecordIORecordError(self.rec_path, offset, "bad_label",
                                      f"label {lab!r} is not an integer class id in [0, {min(n, 2**31)})")
        return int(lab)

    def _known_num_classes(self):
        if self._prop_classes is not None:
            return self._prop_classes
        if self.identity_keys.size:
            return int(self.identity_keys.size)
        return None

    def read(self, key):
        """Read one image record.

        Args:
            key: record key (an entry of :attr:`keys`).

        Returns:
            ``(label, image_bytes)``: the integer class id and the encoded image.

        Raises:
            RecordIORecordError: the record is corrupt (a :class:`BadRecordError`; the message
                names the file and offset).
            RecordIOError: ``key`` is not in the ``.idx`` (a ValueError).
        """
        off = int(self.offsets_of([key])[0])
        hdr, data = self._unpack(self._read_payload(off), off)
        label = self._check_label(hdr.label, off)
        if not data:
            raise RecordIORecordError(self.rec_path, off, "bad_image", "empty image")
        if not _has_image_signature(data[:4]):
            raise RecordIORecordError(self.rec_path, off, "bad_image",
                                      f"no JPEG/PNG/BMP/WebP signature (first bytes {data[:4].hex()})")
        return label, data

    def identity_ranges(self) -> np.ndarray:
        """int64 ``(C, 2)`` image-key ranges ``[a, b)`` from the identity records (``(0, 2)`` when absent).

        Raises:
            RecordIOError / RecordIORecordError: an identity record that is corrupt, whose range
            is not integers inside the image keys ``[1, first identity key]``, or that overlaps
            another identity's range.
        """
        if not self.identity_keys.size:
            return np.zeros((0, 2), np.int64)
        out = np.empty((self.identity_keys.size, 2), np.int64)
        end = self._image_key_end
        offs = self.offsets_of(self.identity_keys)
        for i, k in enumerate(self.identity_keys):
            h = self.header(int(k))
            if h.flag >= 2:
                a, b = self._int_label(h.label[0]), self._int_label(h.label[1])
            elif h.flag == 1:
                a = b = None
            else:
                a, b = int(h.id), int(h.id2)
            if a is None or b is None or not (1 <= a <= b <= end):
                shown = (h.label[0], h.label[1]) if h.flag >= 2 else (h.id, h.id2)
                raise RecordIOError(self.rec_path, f"identity record key {int(k)} has range {shown}; expected "
                                    f"integers 1 <= a <= b <= {end} (the image keys)",
                                    f"byte offset {int(offs[i])}")
            out[i] = a, b
        order = np.argsort(out[:, 0], kind="stable")
        r = out[order]
        clash = np.flatnonzero(r[1:, 0] < r[:-1, 1])
        if clash.size:
            k1, k2 = self.identity_keys[order[clash[0]]], self.identity_keys[order[clash[0] + 1]]
            raise RecordIOError(self.rec_path, f"identity records keys {int(k1)} and {int(k2)} have overlapping "
                                f"image-key ranges {tuple(r[clash[0]])} and {tuple(r[clash[0] + 1])} (each "
                                "image belongs to one identity)", f"byte offset {int(offs[order[clash[0] + 1]])}")
        return out

    def class_counts(self) -> np.ndarray:
        """Images per class (int64 ``(num_classes,)``) without decoding any image.

        From the identity records when present (``b - a`` of each range), else
        from a header-only scan of the image records (corrupt records excluded).
        """
        if self.identity_keys.size:
            r = self.identity_ranges()
            counts = r[:, 1] - r[:, 0]
            n = self.num_classes
            if counts.size < n:
                counts = np.concatenate([counts, np.zeros(n - counts.size, np.int64)])
            return counts
        lab = self.labels
        return np.bincount(lab[lab >= 0], minlength=self.num_classes).astype(np.int64)

    # ---------------------------------------------------------------- scan
    def scan(self):
        """Validate every image record's framing, header, label and image signature (no decode).

        Vectorised over memory-mapped headers (multi-part records are parsed in
        Python); a record that runs into the next indexed record is bad (``"overlap"``). Cached.
        O(n log n) in the number of records; every byte is walked at most once.

        Returns:
            dict with int64 ``labels`` (-1 for bad records), ``image_offset`` and
            ``image_length`` (bytes of the encoded image; for multi-part records
            the record offset and -1), bool ``valid`` and ``multipart``, and
            ``bad``: list of :class:`RecordIORecordError` (one per bad record, in key order;
            kept without tracebacks, so they hold no view of the memory map).
        """
        if self._scan_result is not None:
            return self._scan_result
        n = self.num_images
        size = self.file_size
        buf = self._buf
        labels = np.full(n, -1, np.int64)
        img_off = np.zeros(n, np.int64)
        img_len = np.zeros(n, np.int64)
        reason = np.zeros(n, np.int8)
        multipart = np.zeros(n, bool)
        limit = min(self._label_limit(), 2**31)
        h = sig = None
        span = np.arange(36, dtype=np.int64)
        step = 1 << 18
        for s in range(0, n, step):
            off = self._image_offsets[s:s + step]
            nxt = self._next_offsets(off)
            r = np.zeros(off.size, np.int8)
            h = buf[np.clip(off[:, None] + span, 0, size - 1)]
            u32 = np.ascontiguousarray(h[:, :16]).view("<u4")
            magic, lrec, flag = u32[:, 0], u32[:, 1].astype(np.int64), u32[:, 2].astype(np.int64)
            f32 = np.ascontiguousarray(h[:, 12:16]).view("<f4")[:, 0]
            f32b = np.ascontiguousarray(h[:, 32:36]).view("<f4")[:, 0]
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            r[(off < 0) | (off + 8 > size)] = _TRUNC
            r[(r == 0) & (magic != MAGIC)] = _MAGIC_BAD
            r[(r == 0) & (cflag >= 2)] = _CFLAG
            multi = (r == 0) & (cflag == 1)
            r[(r == 0) & ~multi & (off + 8 + length > size)] = _TRUNC
            r[(r == 0) & ~multi & (off + 8 + length > nxt)] = _OVERLAP
            body = 24 + 4 * np.where(flag > 0, flag, 0)
            r[(r == 0) & ~multi & ((length < 24) | (body > length))] = _SHORT
            lab = np.where(flag > 0, f32b, f32).astype(np.float64)
            ioff = off + 8 + body
            ilen = length - body
            ok = (r == 0) & ~multi
            r[ok & (ilen <= 0)] = _IMAGE
            ok = (r == 0) & ~multi
            sig = buf[np.clip(ioff[:, None] + np.arange(4), 0, size - 1)]
            is_img = (((sig[:, 0] == 0xFF) & (sig[:, 1] == 0xD8) & (sig[:, 2] == 0xFF))
                      | ((sig[:, 0] == 0x89) & (sig[:, 1] == 0x50) & (sig[:, 2] == 0x4E))
                      | ((sig[:, 0] == 0x42) & (sig[:, 1] == 0x4D))
                      | ((sig[:, 0] == 0x52) & (sig[:, 1] == 0x49) & (sig[:, 2] == 0x46)))
            r[ok & ~is_img] = _IMAGE
            ok = (r == 0) & ~multi
            with np.errstate(invalid="ignore"):
                good_lab = np.isfinite(lab) & (lab >= 0) & (lab == np.floor(lab)) & (lab < limit)
            r[ok & ~good_lab] = _LABEL
            ok = (r == 0) & ~multi
            sl = slice(s, s + off.size)
            reason[sl] = r
            multipart[sl] = multi
            labels[sl] = np.where(ok, np.nan_to_num(lab, nan=-1, posinf=-1, neginf=-1), -1).astype(np.int64)
            img_off[sl] = np.where(ok, ioff, 0)
            img_len[sl] = np.where(ok, ilen, 0)
        del buf, h, sig
        bad = {}
        for i in np.flatnonzero(multipart):  # rare: parse in Python (bounded by the next record)
            off = int(self._image_offsets[i])
            try:
                labels[i], _ = self.read(int(self.keys[i]))
                img_off[i], img_len[i] = off, -1
            except BadRecordError as e:
                bad[i] = e.with_traceback(None)
                multipart[i] = False
        for i in np.flatnonzero(reason):
            off = int(self._image_offsets[i])
            try:  # the Python parser gives the detailed message
                self.read(int(self.keys[i]))
                err = RecordIORecordError(self.rec_path, off, _REASONS[int(reason[i])])
            except BadRecordError as e:
                err = e.with_traceback(None)
            bad[i] = err
        valid = np.ones(n, bool)
        valid[list(bad)] = False
        self._scan_result = {
            "labels": np.where(valid, labels, -1), "image_offset": img_off,
            "image_length": img_len, "valid": valid, "multipart": multipart & valid,
            "bad": [bad[i] for i in sorted(bad)], "bad_positions": np.array(sorted(bad), np.int64),
        }
        return self._scan_result

    @property
    def labels(self) -> np.ndarray:
        """int64 class id per image (position in :attr:`keys`); -1 for corrupt records."""
        return self.scan()["labels"]

    def _image_view(self, pos: int):
        """Encoded image of sample ``pos`` as a uint8 array (zero-copy for single-part records)."""
        sc = self._scan_result
        length = int(sc["image_length"][pos])
        if length >= 0:
            return np.frombuffer(self._mm, np.uint8, length, int(sc["image_offset"][pos]))
        return np.frombuffer(self.read(int(self.keys[pos]))[1], np.uint8)
