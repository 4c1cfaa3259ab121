"""Crafted and mutated untrusted inputs for every reader of outside data.

Shared by ``tests/test_untrusted_inputs.py`` (a bounded run in CI) and ``benchmarks/fuzz.py``
(longer campaigns). Nothing here imports TensorFlow at module level; :func:`worker_main` runs
in a subprocess under ``RLIMIT_AS`` and reports one JSON line per input.

Per reader:

* :func:`seed_files` writes a small valid set with the package's own writers;
* :func:`call_reader` runs the reader over a folder the way a user would (open, scan, read,
  decode) and returns a summary; a typed error (a subclass of
  :class:`keras_facemargin.errors.UntrustedFileError`) or ``OSError`` is the only acceptable
  exception;
* :func:`check_accepted` asserts the invariants of an accepted result (labels in range,
  indices unique, shapes consistent, numbers finite);
* :data:`CRAFTED` lists the crafted inputs of issue 12 (memory bombs, CPU hangs, wrong data,
  undocumented exceptions) with the error class and file each must produce.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

READERS = ("bin", "recordio", "tfrecord", "folder", "lfw", "ijb", "megaface", "pth", "onnx")
SIZE = 16  # image side of the seeds


# ----------------------------------------------------------------------------- helpers
def _png(h=SIZE, w=SIZE, seed=0):
    import cv2

    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _jpg(h=SIZE, w=SIZE, seed=0):
    import cv2

    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w=30000, h=30000):
    """A PNG whose header declares ``w x h`` RGB pixels, with a valid start of a zero-filled IDAT stream.

    Decoding it would allocate ``3 * w * h`` bytes (2.7 GB for the default).
    """
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"\0" * (64 * 1024), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")


def png_chunk_bomb(declared=1 << 30):
    """A 16x16 PNG whose ``IDAT`` chunk length field claims ``declared`` bytes (OpenCV allocates
    a chunk's declared length before reading it: 1 GiB for an 850-byte file; found by fuzzing)."""
    b = bytearray(_png())
    off = 8
    while bytes(b[off + 4:off + 8]) != b"IDAT":
        off += 12 + struct.unpack_from(">I", b, off)[0]
    struct.pack_into(">I", b, off, declared)
    return bytes(b)


def jpeg_bomb(w=65000, h=65000):
    """A baseline JPEG frame header declaring ``w x h`` (no scan data)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


class _Reduce:
    """An object that pickles as ``callable(*args)`` [+ ``BUILD state``]."""

    def __init__(self, *rv):
        self.rv = rv

    def __reduce__(self):
        return self.rv


def _np_core():
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _dump_bin(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# ----------------------------------------------------------------------------- seeds
def seed_files(reader, d):
    """Write a small valid input for ``reader`` under ``d`` with the package's writers; return the files."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    if reader == "bin":
        from keras_facemargin.evaluation.bin_sets import write_bin

        write_bin(d / "x.bin", imgs, [True, False, True])
        return [d / "x.bin"]
    if reader == "recordio":
        from keras_facemargin.data.formats.recordio import write_recordio

        items = [(lab, _jpg(seed=i) if i % 2 else _png(seed=i)) for i, lab in enumerate([0, 0, 1, 1, 2, 2])]
        write_recordio(d, items, image_size=(SIZE, SIZE))
        return [d / "train.rec", d / "train.idx", d / "property"]
    if reader == "tfrecord":
        from keras_facemargin.data.formats.tfrecord import write_tfrecords

        files = write_tfrecords(d / "t", [(i, i % 3, _png(seed=i)) for i in range(6)], num_shards=2)
        return [Path(f) for f in files]
    if reader == "folder":
        for i in range(6):
            sub = d / "faces" / f"id{i % 3}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}.{'jpg' if i % 2 else 'png'}").write_bytes(_jpg(seed=i) if i % 2 else _png(seed=i))
        return sorted((d / "faces").rglob("*.*"))
    if reader == "lfw":
        names = ["Ann_A", "Bob_B", "Cid_C", "Dee_D"]
        for n in names:
            (d / "images" / n).mkdir(parents=True, exist_ok=True)
            for k in (1, 2):
                (d / "images" / n / f"{n}_{k:04d}.jpg").write_bytes(_jpg(seed=k))
        lines = ["2 1", "Ann_A 1 2", "Ann_A 1 Bob_B 2", "Cid_C 1 2", "Cid_C 2 Dee_D 1"]
        (d / "pairs.txt").write_text("\n".join(lines) + "\n")
        return [d / "pairs.txt"]
    if reader == "ijb":
        m = d / "meta"
        m.mkdir(parents=True, exist_ok=True)
        names = [f"{i}.jpg" for i in range(6)]
        (m / "ijbc_name_5pts_score.txt").write_text("".join(
            f"{n} " + " ".join(f"{v:.2f}" for v in rng.uniform(20, 90, 10)) + f" {rng.uniform(0.5, 1):.3f}\n"
            for n in names))
        (m / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {i // 2} {i}\n" for i, n in enumerate(names)))
        (m / "ijbc_template_pair_label.txt").write_text("0 1 0\n0 2 1\n1 2 0\n")
        (m / "ijbc_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n0,10,0.jpg\n1,11,2.jpg\n")
        (m / "ijbc_1N_gallery_G1.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,10,4.jpg\n")
        return sorted(m.iterdir())
    if reader == "megaface":
        from keras_facemargin.evaluation.megaface import write_feature_bin

        np.save(d / "f.npy", rng.standard_normal((4, 8)).astype(np.float32))
        (d / "bins").mkdir(exist_ok=True)
        for i in range(3):
            write_feature_bin(d / "bins" / f"{i}.png_insightface.bin", rng.standard_normal(8))
        (d / "noises.txt").write_text("# comment\n1.png\n")
        return [d / "f.npy", *sorted((d / "bins").iterdir()), d / "noises.txt"]
    if reader in ("pth", "onnx"):
        return _weights_seed(reader, d)
    raise ValueError(reader)


# ----------------------------------------------------------------------------- readers
def call_reader(reader, d):
    """Run ``reader`` on ``d`` as a user would; returns a summary dict (typed errors propagate)."""
    d = Path(d)
    if reader == "bin":
        from keras_facemargin.evaluation.bin_sets import load_bin

        images, same = load_bin(d / "x.bin", image_size=(SIZE, SIZE))
        return {"images": images.shape, "pairs": int(same.size), "dtype": str(same.dtype)}
    if reader == "recordio":
        from keras_facemargin.data.formats.recordio import RecordIOReader, RecordIORecordError
        from keras_facemargin.data.pipeline import decode_image_into

        r = RecordIOReader(d)
        try:
            sc = r.scan()
            counts = r.class_counts()
            nc = r.num_classes
            out = np.empty((SIZE, SIZE, 3), np.uint8)
            bad = [str(e) for e in sc["bad"]]
            decoded = 0
            for pos in np.flatnonzero(sc["valid"])[:64]:  # as make_dataset's chunk decoder does
                why = decode_image_into(r._image_view(int(pos)), out, True, r.max_image_pixels)
                if why is None:
                    decoded += 1
                else:
                    bad.append(str(RecordIORecordError(r.rec_path, int(r._image_offsets[pos]), "bad_image", why)))
            summary = {"num_images": r.num_images, "num_classes": nc, "counts": counts.tolist()[:8],
                       "counts_sum": int(counts.sum()), "labels": sc["labels"].tolist()[:64],
                       "bad": bad, "decoded": decoded,
                       "label_max": int(sc["labels"].max(initial=-1))}
        finally:
            r.close()
        return summary
    if reader == "tfrecord":
        from keras_facemargin.data.errors import BadRecordReport
        from keras_facemargin.data.formats.tfrecord import make_tfrecord_dataset

        report = BadRecordReport(max_examples=50)
        ds = make_tfrecord_dataset(str(d / "t-*.tfrecord"), 4, image_size=SIZE, shuffle=False, shard=None,
                                   drop_remainder=False, augment_flip=False, report=report,
                                   num_parallel_calls=1)
        idx, labels = [], []
        for x, y in ds:
            idx += x["index"].numpy().tolist()
            labels += y.numpy().tolist()
        return {"index": idx, "labels": labels, "bad": [_ex(e) for e in report.examples], "n_bad": report.count}
    if reader == "folder":
        from keras_facemargin.data.identity_folders import load_identity_folder
        from keras_facemargin.data.training_set import load_training_set

        data = load_identity_folder(d / "faces", image_size=SIZE, crop="none", on_error="skip", num_threads=1)
        ts = load_training_set(d / "faces", image_size=SIZE)
        try:
            from keras_facemargin.data.errors import BadRecordReport

            report = BadRecordReport(max_examples=50)
            ds = ts.make_dataset(4, shuffle=False, drop_remainder=False, augment_flip=False, report=report,
                                 num_parallel_calls=1)
            n = sum(int(y.shape[0]) for _, y in ds)
        finally:
            ts.close()
        return {"images": data.images.shape, "unreadable": [u[0] + ": " + u[1] for u in data.unreadable],
                "bad": [str(e) for e in ts.bad_records] + [_ex(e) for e in report.examples],
                "n_samples": ts.num_samples, "n_iter": n}
    if reader == "lfw":
        from keras_facemargin.data.lfw import load_lfw_pairs

        pairs = load_lfw_pairs(d, check_exists=False)
        root = os.path.realpath(d / "images") + os.sep
        outside = [p for p in np.concatenate([pairs.paths_a, pairs.paths_b])
                   if not os.path.normpath(str(p)).startswith(root)]
        return {"pairs": len(pairs), "outside": outside[:3]}
    if reader == "ijb":
        from keras_facemargin.evaluation.ijb import load_ijb_meta

        meta = load_ijb_meta(d, "IJBC")
        return {"names": meta.names.tolist()[:8], "finite": bool(np.isfinite(meta.landmarks).all()
                                                                 and np.isfinite(meta.det_scores).all()),
                "pairs": int(meta.pair_t1.size), "n": int(meta.names.size)}
    if reader == "megaface":
        from keras_facemargin.evaluation.megaface import load_features, read_noise_list

        a = load_features(d / "f.npy")
        names = sorted(p.name[:-len("_insightface.bin")] for p in (d / "bins").iterdir())
        b = load_features(d / "bins", names)
        noise = read_noise_list(d / "noises.txt")
        return {"npy": a.shape, "bins": b.shape, "finite": bool(np.isfinite(a).all() and np.isfinite(b).all()),
                "noise": len(noise)}
    if reader in ("pth", "onnx"):
        return _weights_reader(reader, d)
    raise ValueError(reader)


def _ex(e):
    return f"{e['file']} @ {e['offset']}: {e['reason']} ({e['detail']})"


def check_accepted(reader, s):
    """Invariants of an accepted (possibly mutated) input; raises AssertionError."""
    if reader == "bin":
        assert s["images"][0] == 2 * s["pairs"] and s["dtype"] == "bool", s
    elif reader == "recordio":
        assert s["label_max"] < max(s["num_classes"], 1) or s["label_max"] == -1, s
        assert s["counts_sum"] <= s["num_images"] or not s["counts"], s
        assert min(s["counts"], default=0) >= 0, s
    elif reader == "tfrecord":
        assert len(set(s["index"])) == len(s["index"]), f"duplicate sample indices accepted: {s}"
        assert all(0 <= i < 2**31 for i in s["index"]) and all(0 <= v < 2**31 for v in s["labels"]), s
    elif reader == "folder":
        assert s["n_iter"] <= s["n_samples"], s
    elif reader == "lfw":
        assert not s["outside"], f"paths outside images/ accepted: {s}"
    elif reader == "ijb":
        assert s["finite"], s
        assert all(not n.startswith("/") and ".." not in n.split("/") for n in s["names"]), s
    elif reader == "megaface":
        assert s["finite"], s
    elif reader in ("pth", "onnx"):
        _weights_check(s)


# ----------------------------------------------------------------------------- crafted inputs
@dataclass
class Case:
    """A crafted input: ``build(d)`` writes it over a seed; ``error`` is the class name expected
    (raised, or ``"bad"``: collected as bad records), ``file`` the name the message must contain
    (and ``node``, when set, another text it must contain)."""

    reader: str
    name: str
    build: object
    error: str
    file: str
    max_seconds: float = 20.0
    node: str = None  # a text the message must also contain (the ONNX node, input or tensor)


def _bin(obj, protocol=4):
    def build(d):
        _dump_bin(d / "x.bin", obj() if callable(obj) else obj, protocol)
    return build


def _raw(name, data):
    def build(d):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data() if callable(data) else data)
    return build


def _bin_cases():
    ma = _np_core()
    good = [_png(seed=i) for i in range(2)]
    recon = ma._reconstruct
    dt = np.dtype
    cases = [
        ("huge memo index (LONG_BINPUT 2**31-1)", _raw("x.bin", b"\x80\x04]r\xff\xff\xff\x7f0N."), "BinSetError"),
        ("memo get of an unset slot", _raw("x.bin", b"\x80\x04j\xff\xff\xff\x00."), "BinSetError"),
        ("object array of 450e6 entries",
         _bin(lambda: (good, _Reduce(recon, (np.ndarray, (0,), b"b"), (1, (450_000_000,), dt("O"), False, [])))),
         "BinSetError"),
        ("V1600000000 scalar", _bin(lambda: (good, [_Reduce(ma.scalar, (dt("V1600000000"), b""))])), "BinSetError"),
        ("crafted dtype state: object field at an offset",
         _bin(lambda: (good, _Reduce(recon, (np.ndarray, (0,), b"b"),
                                     (1, (1,), _Reduce(dt, ("V8", False, True),
                                                       (3, "|", None, ("f",), {"f": (dt("O"), 4)}, 8, 1, 63)),
                                      False, b"\0" * 8)))), "UnsafeBinError"),
        ("crafted dtype state on bool, object field in a 1-byte item",
         _bin(lambda: (good, _Reduce(recon, (np.ndarray, (0,), b"b"),
                                     (1, (1,), _Reduce(dt, ("b1", False, True), (3, "|", None, None, None, 1, 1, 63)),
                                      False, b"\x02")))), "BinSetError"),
        ("_codecs.encode punycode (quadratic)",
         _bin(lambda: ([_Reduce(__import__("_codecs").encode, ("\u00e9" * 200_000, "punycode"))], [True]), 4),
         "BinSetError"),
        ("80,000 memo references to one image", _bin(lambda: ([good[0]] * 80_000, [True] * 40_000)), "BinSetError"),
        ("30000x30000 PNG", _bin(lambda: ([png_bomb(), good[0]], [True])), "BinSetError"),
        ("PNG chunk declaring 1 GiB", _bin(lambda: ([png_chunk_bomb(), good[0]], [True])), "BinSetError"),
        ("65000x65000 JPEG frame", _bin(lambda: ([jpeg_bomb(), good[0]], [True])), "BinSetError"),
        ("TIFF bytes (format outside the allowlist)",
         _bin(lambda: ([b"II*\0" + b"\0" * 100, good[0]], [True])), "BinSetError"),
        ("os.system global", _bin(lambda: _Reduce(os.system, ("echo PWNED",))), "UnsafeBinError"),
        ("builtins.eval global", _bin(lambda: _Reduce(eval, ("1+1",))), "UnsafeBinError"),
        ("dict of colliding int keys", _bin(lambda: (good, {k * (2**61 - 1): True for k in range(2000)})),
         "UnsafeBinError"),
        ("truncated pickle", lambda d: (d / "x.bin").write_bytes(pickle.dumps((good, [True]), 4)[:-30]),
         "BinSetError"),
        ("not a pickle", _raw("x.bin", b"\x00\x01garbage"), "BinSetError"),
        ("empty file", _raw("x.bin", b""), "BinSetError"),
        ("int labels array", _bin(lambda: (good, np.array([1]))), "BinSetError"),
        ("nested structure", _bin(lambda: [[good], [True]]), "BinSetError"),
        ("huge LONG4 int", _raw("x.bin", b"\x80\x04\x8b\x00\x00\x10\x00" + b"\xff" * (1 << 20) + b"."), "BinSetError"),
        ("deep list nesting", _raw("x.bin", b"\x80\x04" + b"]" * 200_000 + b"." ), "BinSetError"),
    ]
    return [Case("bin", n, b, e, "x.bin") for n, b, e in cases]


def _rec_write(d, items, **kw):
    from keras_facemargin.data.formats.recordio import write_recordio

    return write_recordio(d, items, image_size=(SIZE, SIZE), **kw)


def _ir(flag_labels, label, id_, data=b""):
    from keras_facemargin.data.formats.recordio.records import _pack_payload

    return _pack_payload(flag_labels, label, id_, 0, data)


def _rec_set(d, records, idx_lines=None, prop=None):
    """Write ``train.rec`` from ``[(key, payload_bytes_or_framed)]``, its ``.idx`` and ``property``."""
    from keras_facemargin.data.formats.recordio import pack_record

    lines = []
    with open(d / "train.rec", "wb") as f:
        for key, rec in records:
            lines.append(f"{key}\t{f.tell()}")
            f.write(rec if isinstance(rec, (bytes, bytearray)) and rec[:4] == b"\x0a\x23\xd7\xce" else pack_record(rec))
    (d / "train.idx").write_text("\n".join(idx_lines if idx_lines is not None else lines) + "\n")
    if prop is not None:
        (d / "property").write_text(prop)
    elif (d / "property").exists():
        (d / "property").unlink()


def _recordio_cases():
    png = _png()

    def header_range(d):
        _rec_set(d, [(0, _ir([1, 300_000_000], 0, 0)), (1, _ir(None, 0, 1, png))])

    def header_nan(d):
        _rec_set(d, [(0, _ir([float("nan"), float("inf")], 0, 0)), (1, _ir(None, 0, 1, png))])

    def prop_classes(d):
        _rec_set(d, [(1, _ir(None, 0, 1, png))], prop="300000000,16,16")

    def prop_pixels(d):
        _rec_set(d, [(1, _ir(None, 0, 1, png))], prop="2,30000,30000")

    def labels_huge(d):
        _rec_set(d, [(1, _ir(None, 299_999_999.0, 1, png)), (2, _ir(None, 3.4e38, 2, png)),
                     (3, _ir(None, float("inf"), 3, png)), (4, _ir(None, 0, 4, png))])

    def identity_range(d):
        _rec_set(d, [(0, _ir([2, 3], 0, 0)), (1, _ir(None, 0, 1, png)), (2, _ir([0, 3e9], 0, 2))])

    def identity_overlap(d):
        _rec_set(d, [(0, _ir([3, 5], 0, 0)), (1, _ir(None, 0, 1, png)), (2, _ir(None, 1, 2, png)),
                     (3, _ir([1, 3], 0, 3)), (4, _ir([1, 3], 0, 4))])

    def one_record_n_keys(d, n=20_000):
        from keras_facemargin.data.formats.recordio import MAGIC

        body = b"".join(struct.pack("<II", MAGIC, ((1 if i == 0 else 3 if i == n - 1 else 2) << 29) | 4)
                        + (_ir(None, 0, 1)[:4] if i == 0 else b"abcd") for i in range(n))
        (d / "train.rec").write_bytes(body)
        (d / "train.idx").write_text("".join(f"{k}\t0\n" for k in range(1, n + 1)))
        (d / "property").unlink()

    def parts_n_keys(d, n=20_000):
        from keras_facemargin.data.formats.recordio import MAGIC

        body = b"".join(struct.pack("<II", MAGIC, ((1 if i == 0 else 3 if i == n - 1 else 2) << 29) | 4) + b"abcd"
                        for i in range(n))
        (d / "train.rec").write_bytes(body)
        (d / "train.idx").write_text("".join(f"{k}\t{12 * (k - 1)}\n" for k in range(1, n + 1)))
        (d / "property").unlink()

    def overlapping_lengths(d, n=20_000):
        from keras_facemargin.data.formats.recordio import MAGIC

        size = 12 * n
        body = b"".join(struct.pack("<II", MAGIC, size - 12 * i - 8) + b"abcd" for i in range(n))
        (d / "train.rec").write_bytes(body)
        (d / "train.idx").write_text("".join(f"{k}\t{12 * (k - 1)}\n" for k in range(1, n + 1)))
        (d / "property").unlink()

    def big_image(d):
        _rec_set(d, [(1, _ir(None, 0, 1, png_bomb())), (2, _ir(None, 0, 2, png))], prop="1,16,16")

    cases = [
        ("header range (1, 3e8)", header_range, "RecordIOError", "train.rec"),
        ("header range NaN / inf", header_nan, "RecordIOError", "train.rec"),
        ("property classes 3e8", prop_classes, "RecordIOError", "property"),
        ("property 30000x30000", prop_pixels, "RecordIOError", "property"),
        ("property not ASCII", lambda d: (d / "property").write_bytes(b"\xff\xfe5,16,16"), "RecordIOError",
         "property"),
        ("labels 3e8, 3.4e38, inf", labels_huge, "bad", "train.rec"),
        ("identity range (0, 3e9)", identity_range, "RecordIOError", "train.rec"),
        ("identity ranges overlap", identity_overlap, "RecordIOError", "train.rec"),
        ("20,000 keys at one multi-part record", one_record_n_keys, "RecordIOError", "train.idx"),
        ("20,000 keys at the parts of one record", parts_n_keys, "bad", "train.rec"),
        ("20,000 records each claiming the rest of the file", overlapping_lengths, "bad", "train.rec"),
        ("idx value beyond uint64", lambda d: (d / "train.idx").write_text("0\t0\n1\t99999999999999999999999\n"),
         "RecordIOError", "train.idx"),
        ("idx inf", lambda d: (d / "train.idx").write_text("0\tinf\n"), "RecordIOError", "train.idx"),
        ("idx three columns", lambda d: (d / "train.idx").write_text("0\t0\t5\n1\t64\n"), "RecordIOError",
         "train.idx"),
        ("idx binary", lambda d: (d / "train.idx").write_bytes(b"\x00\xff\xfe\x01" * 10), "RecordIOError",
         "train.idx"),
        ("idx duplicate key", lambda d: (d / "train.idx").write_text("0\t0\n0\t64\n"), "RecordIOError", "train.idx"),
        ("30000x30000 PNG record", big_image, "bad", "train.rec"),
        ("PNG record with a chunk declaring 1 GiB",
         lambda d: _rec_set(d, [(1, _ir(None, 0, 1, png_chunk_bomb())), (2, _ir(None, 0, 2, png))], prop="1,16,16"),
         "bad", "train.rec"),
        ("rec truncated to 3 bytes", lambda d: (d / "train.rec").write_bytes(b"\x0a\x23\xd7"), "RecordIORecordError",
         "train.rec"),
    ]
    return [Case("recordio", n, b, e, f) for n, b, e, f in cases]


def _tf_write(d, examples):
    """Write serialized records to ``t-00000-of-00001.tfrecord``, replacing the seed shards."""
    import tensorflow as tf

    for p in d.glob("t-*.tfrecord"):
        p.unlink()
    with tf.io.TFRecordWriter(str(d / "t-00000-of-00001.tfrecord")) as w:
        for ex in examples:
            w.write(ex)


def _tfrecord_cases():
    from keras_facemargin.data.formats.tfrecord import encode_example

    png = _png()

    def example(**features):
        import tensorflow as tf

        feat = {}
        for k, v in features.items():
            if isinstance(v, bytes):
                feat[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
            elif isinstance(v, float):
                feat[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
            else:
                feat[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))
        return tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString()

    cases = [
        ("label 2**32 + 1 (wraps to 1 in int32)",
         lambda d: _tf_write(d, [encode_example(0, 2**32 + 1, png), encode_example(1, 1, png)]), "bad"),
        ("negative, huge and duplicate indices",
         lambda d: _tf_write(d, [encode_example(0, 0, png), encode_example(0, 1, png), encode_example(-3, 0, png),
                                 encode_example(2**40, 0, png), encode_example(7, 0, png)]), "bad"),
        ("record without image/label",
         lambda d: _tf_write(d, [example(**{"image/encoded": png, "image/index": [0]}), encode_example(1, 0, png)]),
         "bad"),
        ("label as a float list, two indices",
         lambda d: _tf_write(d, [example(**{"image/encoded": png, "image/index": [0], "image/label": 1.0}),
                                 example(**{"image/encoded": png, "image/index": [1, 2], "image/label": [0]}),
                                 encode_example(3, 0, png)]), "bad"),
        ("not an Example", lambda d: _tf_write(d, [b"\x0a\xff\xff\xff\xff\x0f", encode_example(1, 0, png)]), "bad"),
        ("30000x30000 PNG", lambda d: _tf_write(d, [encode_example(0, 0, png_bomb()), encode_example(1, 0, png)]),
         "bad"),
        ("PNG chunk declaring 1 GiB",
         lambda d: _tf_write(d, [encode_example(0, 0, png_chunk_bomb()), encode_example(1, 0, png)]), "bad"),
        ("truncated file", lambda d: (d / "t-00000-of-00002.tfrecord").write_bytes(
            (d / "t-00000-of-00002.tfrecord").read_bytes()[:30]), "bad"),
        ("only junk", lambda d: [p.write_bytes(b"junk") for p in d.glob("t-*.tfrecord")], "TFRecordError"),
    ]
    return [Case("tfrecord", n, b, e, ".tfrecord", 60.0) for n, b, e in cases]


def _folder_cases():
    def put(name, data):
        def build(d):
            p = d / "faces" / "id0" / name
            p.write_bytes(data() if callable(data) else data)
        return build

    cases = [
        ("30000x30000 PNG", put("bomb.png", png_bomb), "bad", "bomb.png"),
        ("PNG chunk declaring 1 GiB", put("chunk.png", png_chunk_bomb), "bad", "chunk.png"),
        ("65000x65000 JPEG", put("bomb.jpg", jpeg_bomb), "bad", "bomb.jpg"),
        ("TIFF named .jpg", put("t.jpg", b"II*\0" + b"\0" * 200), "bad", "t.jpg"),
        ("JPEG without a frame header", put("x.jpg", b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02\xff\xd9"), "bad",
         "x.jpg"),
    ]
    return [Case("folder", n, b, e, f, 60.0) for n, b, e, f in cases]


def _lfw_cases():
    def pairs(text):
        return _raw("pairs.txt", text.encode() if isinstance(text, str) else text)

    cases = [
        ("../ in a name", pairs("1 1\n../../etc 1 2\nAnn_A 1 Bob_B 2\n")),
        ("absolute name", pairs("1 1\n/etc 1 2\nAnn_A 1 Bob_B 2\n")),
        ("backslash name", pairs("1 1\n..\\..\\x 1 2\nAnn_A 1 Bob_B 2\n")),
        ("not UTF-8", pairs(b"1 1\nAnn_\xff 1 2\nAnn_A 1 Bob_B 2\n")),
        ("NUL byte", pairs("1 1\nAnn\0 1 2\nAnn_A 1 Bob_B 2\n")),
        ("huge header", pairs("99999999999 99999999999\nAnn_A 1 2\n")),
        ("huge image number", pairs("1 1\nAnn_A 1 " + "9" * 5000 + "\nAnn_A 1 Bob_B 2\n")),
        ("wrong line kinds", pairs("1 1\nAnn_A 1 Bob_B 2\nAnn_A 1 2\n")),
        ("empty", pairs("")),
    ]
    return [Case("lfw", n, b, "PairsFileError", "pairs.txt") for n, b in cases]


def _ijb_cases():
    m = "meta/"
    lm = m + "ijbc_name_5pts_score.txt"
    tm = m + "ijbc_face_tid_mid.txt"
    pr = m + "ijbc_template_pair_label.txt"
    cs = m + "ijbc_1N_probe_mixed.csv"

    def lm_line(name="0.jpg", vals=None, score="0.9"):
        vals = vals or ["1.0"] * 10
        return f"{name} {' '.join(vals)} {score}\n"

    cases = [
        ("template id above int64", _raw(tm, b"0.jpg 99999999999999999999 1\n"), tm),
        ("media id below int64", _raw(tm, b"0.jpg 1 -99999999999999999999\n"), tm),
        ("pair id above int64", _raw(pr, b"0 1 0\n18446744073709551617 1 1\n"), pr),
        ("pair line structure", _raw(pr, b"0 1\n0 2 1 0\n1\n"), pr),
        ("pair label 2", _raw(pr, b"0 1 2\n"), pr),
        ("NaN landmark", _raw(lm, lm_line(vals=["nan"] + ["1.0"] * 9).encode()), lm),
        ("inf score", _raw(lm, lm_line(score="inf").encode()), lm),
        ("1e39 landmark (inf in float32)", _raw(lm, lm_line(vals=["1e39"] + ["1.0"] * 9).encode()), lm),
        ("../ image name", _raw(lm, lm_line(name="../../etc/passwd").encode()), lm),
        ("absolute image name", _raw(tm, b"/etc/passwd 1 1\n"), tm),
        ("not UTF-8", _raw(lm, b"\xff\xfe" + lm_line().encode()), lm),
        ("csv NUL", _raw(cs, b"TEMPLATE_ID,SUBJECT_ID\n1,\x002\n"), cs),
        ("csv field over the csv limit", _raw(cs, b'TEMPLATE_ID,SUBJECT_ID\n1,"' + b"9" * 200_000 + b'"\n'), cs),
        ("csv id above int64", _raw(cs, b"TEMPLATE_ID,SUBJECT_ID\n99999999999999999999,1\n"), cs),
        ("csv short row", _raw(cs, b"TEMPLATE_ID,SUBJECT_ID\n1\n"), cs),
    ]
    return [Case("ijb", n, b, "IJBFileError", Path(f).name) for n, b, f in cases]


def _megaface_cases():
    def npy_header(descr, shape, fortran=False):
        h = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
        h += b" " * (-(len(h) + 11) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h

    def feature_bin(values, rows=None):
        v = np.asarray(values, "<f4")
        return struct.pack("<4i", rows if rows is not None else v.size, 1, 4, 5) + v.tobytes()

    cases = [
        ("npy shape (2e9, 2e9) in a tiny file", _raw("f.npy", npy_header("<f4", (2_000_000_000, 2_000_000_000))),
         "f.npy"),
        ("npy object dtype", _raw("f.npy", npy_header("|O", (2, 2)) + b"\0" * 32), "f.npy"),
        ("npy header that does not tokenize", _raw("f.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '''\n"), "f.npy"),
        ("npy header with a call", _raw("f.npy", npy_header("<f4", (1, 1))[:10] + b"__import__('os').system('x')\n"),
         "f.npy"),
        ("npy NaN", lambda d: np.save(d / "f.npy", np.array([[1.0, np.nan]], np.float32)), "f.npy"),
        ("npy 3-D", lambda d: np.save(d / "f.npy", np.zeros((1, 2, 2), np.float32)), "f.npy"),
        ("bin rows 2**31-1", _raw("bins/0.png_insightface.bin", feature_bin([1.0] * 8, rows=2**31 - 1)),
         "0.png_insightface.bin"),
        ("bin inf", _raw("bins/0.png_insightface.bin", feature_bin([np.inf] + [1.0] * 7)), "0.png_insightface.bin"),
        ("noise list not UTF-8", _raw("noises.txt", b"\xff\xfe1.png\n"), "noises.txt"),
    ]
    return [Case("megaface", n, b, "MegaFaceFileError", f) for n, b, f in cases]


# ----------------------------------------------------------------------------- weights (.pth / .onnx)
WEIGHT_FILTERS, WEIGHT_EMB = (4, 4, 8, 8), 8


def tiny_iresnet_state_dict(seed=0, filters=WEIGHT_FILTERS, emb=WEIGHT_EMB):
    """An insightface IResNet state dict (PyTorch names / layouts), one block per stage, for
    ``SIZE x SIZE`` images (a 1x1 final map): ``tests/test_convert.py``'s writer at this size."""
    from test_convert import random_state_dict

    return random_state_dict(seed, blocks=(1, 1, 1, 1), filters=filters, emb=emb, hw=SIZE // 16)


def tiny_iresnet_onnx(sd=None):
    """The ONNX graph of :func:`tiny_iresnet_state_dict` (``tests/test_convert.py``'s exporter)."""
    from test_convert import iresnet_onnx

    return iresnet_onnx(sd or tiny_iresnet_state_dict(), blocks=(1, 1, 1, 1), size=SIZE)


def _torch_checkpoint(path):
    """arcface_torch's resume checkpoint layout written by torch.save (OrderedDict with _metadata,
    a float16 and a strided tensor, PartialFC centres, optimizer state); False without torch."""
    try:
        import torch
    except ImportError:
        return False
    sd = {k: torch.from_numpy(v.copy()) for k, v in tiny_iresnet_state_dict(seed=1).items()}
    sd["conv1.weight"] = sd["conv1.weight"].half()
    sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"].transpose(0, 1).contiguous().transpose(0, 1)
    sd["layer1.0.bn1.num_batches_tracked"] = torch.tensor(3)
    backbone = torch.nn.Module()
    state = backbone.state_dict()  # an OrderedDict with its _metadata attribute
    state.update(sd)
    torch.save({"epoch": 2, "global_step": 10, "state_dict_backbone": state,
                "state_dict_softmax_fc": {"weight": torch.zeros(12, WEIGHT_EMB)},
                "state_optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}},
                                    "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "nesterov": False}]}},
               path)
    return True


def _weights_seed(reader, d):
    from keras_facemargin.convert.pth import write_torch_state_dict

    if reader == "pth":
        write_torch_state_dict(tiny_iresnet_state_dict(), d / "backbone.pth")
        files = [d / "backbone.pth"]
        if _torch_checkpoint(d / "checkpoint.pt"):
            files.append(d / "checkpoint.pt")
        for zp in list(files):  # the pickles alone: mutated, they are re-zipped (valid CRCs) by the reader
            with zipfile.ZipFile(zp) as z:
                (d / f"{zp.stem}.pkl").write_bytes(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
            files.append(d / f"{zp.stem}.pkl")
        return files
    import onnx

    onnx.save(tiny_iresnet_onnx(), str(d / "r.onnx"))
    return [d / "r.onnx"]


def _repack(d):
    """``<stem>.repacked.pth``: ``<stem>.pth`` / ``.pt`` with its data.pkl replaced by ``<stem>.pkl``
    (so a mutated pickle reaches the unpickler instead of failing the zip's CRC)."""
    for pkl in sorted(d.glob("*.pkl")):
        src = next((p for p in (d / f"{pkl.stem}.pth", d / f"{pkl.stem}.pt") if p.exists()), None)
        if src is None:
            continue
        try:
            with zipfile.ZipFile(src) as z, zipfile.ZipFile(d / f"{pkl.stem}.repacked.pth", "w") as out:
                for info in z.infolist():
                    out.writestr(info.filename, pkl.read_bytes() if info.filename.endswith("data.pkl")
                                 else z.read(info))
        except Exception:  # noqa: BLE001 - a mutated zip: it is read (and refused) as it is
            (d / f"{pkl.stem}.repacked.pth").unlink(missing_ok=True)


def _weights_reader(reader, d):
    from keras_facemargin.convert.insightface import read_insightface

    if reader == "pth":
        _repack(d)
    files = sorted(p for p in d.iterdir() if p.suffix in (".pth", ".pt", ".onnx"))
    out = {"files": 0, "tensors": 0, "bytes": 0, "file_bytes": 0, "finite": True, "configs": [], "dtypes": set()}
    for p in files:
        sd, info = read_insightface(p)
        out["files"] += 1
        out["tensors"] += len(sd)
        out["bytes"] += sum(int(np.asarray(v).nbytes) for v in sd.values())
        out["file_bytes"] += p.stat().st_size
        out["finite"] &= all(np.isfinite(v).all() for v in sd.values() if np.asarray(v).dtype.kind == "f")
        out["dtypes"] |= {str(np.asarray(v).dtype) for v in sd.values()}
        out["configs"].append({"arch": info["arch"], **info["config"]})
    out["dtypes"] = sorted(out["dtypes"])
    return out


def _weights_check(s):
    assert s["finite"], s
    assert set(s["dtypes"]) <= {"float32", "int64", "int32", "int16", "int8", "uint8", "bool"}, s
    assert s["bytes"] <= 4 * s["file_bytes"] + (4 << 20), f"arrays of {s['bytes']} bytes from {s['file_bytes']}: {s}"
    for c in s["configs"]:
        h, w, ch = c["image_shape"]
        assert 0 < h <= 4096 and 0 < w <= 4096 and ch == 3, s
        assert c["embedding_dim"] > 0, s
        if c["arch"] == "iresnet":
            assert all(f > 0 for f in c["stage_filters"]), s
            assert c["stage_blocks"] is None or all(0 < b <= 1000 for b in c["stage_blocks"]), s


# --- crafted .pth inputs
class _Pid:
    """Pickles as a persistent id (``BINPERSID``)."""

    def __init__(self, pid):
        self.pid = pid


class _CraftPickler(pickle._Pickler):
    """A pure-Python pickler writing the given global names for stand-in classes (no torch)."""

    def __init__(self, f, names, protocol=2):
        super().__init__(f, protocol)
        self._names = names

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Pid) else None

    def save_global(self, obj, name=None):
        if isinstance(obj, type) and obj in self._names:
            module, qual = self._names[obj]
            self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)


def _glob(module, name):
    return type(name, (), {"__module__": module})


_REBUILD = _glob("torch._utils", "_rebuild_tensor_v2")
_PARAM = _glob("torch._utils", "_rebuild_parameter")
_FLOAT, _BOOL = _glob("torch", "FloatStorage"), _glob("torch", "BoolStorage")
_GLOBAL_NAMES = {g: (g.__module__, g.__name__) for g in (_REBUILD, _PARAM, _FLOAT, _BOOL)}
_OS_SYSTEM = _glob("os", "system")
_GLOBAL_NAMES[_OS_SYSTEM] = ("os", "system")


def _tensor(key, numel, offset, size, stride, storage=_FLOAT):
    import collections

    return _Reduce(_REBUILD, (_Pid(("storage", storage, key, "cpu", numel)), offset, tuple(size), tuple(stride),
                              False, collections.OrderedDict()))


def _pickle(obj, protocol=2):
    import io

    buf = io.BytesIO()
    _CraftPickler(buf, _GLOBAL_NAMES, protocol).dump(obj)
    return buf.getvalue()


def _pth(pkl, storages=None, name="backbone.pth", method=zipfile.ZIP_STORED, byteorder=b"little", extra=()):
    def build(d):
        p = d / name
        with zipfile.ZipFile(p, "w", method) as z:
            z.writestr("archive/data.pkl", pkl() if callable(pkl) else pkl)
            if byteorder is not None:
                z.writestr("archive/byteorder", byteorder)
            for key, raw in (storages or {}).items():
                z.writestr(f"archive/data/{key}", raw)
            for n, raw in extra:
                z.writestr(n, raw)
            z.writestr("archive/version", "3\n")
    return build


def _zip_records(data):
    """``(start of the central directory, [(offset, name) of each central record], EOCD offset)``."""
    eocd = data.rindex(b"PK\x05\x06")
    start = struct.unpack_from("<I", data, eocd + 16)[0]
    out, i = [], start
    while data[i:i + 4] == b"PK\x01\x02":
        nlen, xlen, clen = struct.unpack_from("<HHH", data, i + 28)
        out.append((i, bytes(data[i + 46:i + 46 + nlen]).decode()))
        i += 46 + nlen + xlen + clen
    return start, out, eocd


def _patch_zip(name, entry, flag=None, method=None, size=None):
    """Rewrite fields of one entry's central record and local header."""
    def build(d):
        p = d / name
        data = bytearray(p.read_bytes())
        _, recs, _ = _zip_records(data)
        cen = next(off for off, n in recs if n == entry)
        loc = struct.unpack_from("<I", data, cen + 42)[0]
        for value, c_at, l_at, fmt in ((flag, 8, 6, "<H"), (method, 10, 8, "<H"), (size, 24, 22, "<I")):
            if value is not None:
                struct.pack_into(fmt, data, cen + c_at, value)
                struct.pack_into(fmt, data, loc + l_at, value)
        p.write_bytes(bytes(data))
    return build


def _dup_central(name, entry, new_name):
    """Add a second central record for ``entry``'s data under ``new_name`` (same length): two
    entries sharing one local header, as in overlapping-entry zip bombs."""
    def build(d):
        p = d / name
        data = p.read_bytes()
        start, recs, eocd = _zip_records(data)
        off = next(o for o, n in recs if n == entry)
        nlen, xlen, clen = struct.unpack_from("<HHH", data, off + 28)
        rec = bytearray(data[off:off + 46 + nlen + xlen + clen])
        rec[46:46 + nlen] = new_name.encode()
        cdir = data[start:eocd] + bytes(rec)
        end = bytearray(data[eocd:eocd + 22])
        n = struct.unpack_from("<H", end, 8)[0] + 1
        struct.pack_into("<HHII", end, 8, n, n, len(cdir), start)
        p.write_bytes(data[:start] + cdir + bytes(end))
    return build


def _then(*builds):
    def build(d):
        for b in builds:
            b(d)
    return build


def _deflate_bomb_entry(n_bytes):
    def build(d):
        p = d / "backbone.pth"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("archive/data.pkl", _pickle({"w": _tensor("0", 4, 0, (4,), (1,))}))
            z.writestr("archive/byteorder", "little")
            with z.open("archive/data/0", "w") as f:
                chunk = b"\0" * (1 << 20)
                for _ in range(n_bytes >> 20):
                    f.write(chunk)
    return build


def _pth_cases():
    import collections

    from keras_facemargin.convert.pth import write_torch_state_dict

    f4 = np.arange(4, dtype="<f4").tobytes()
    mib = np.zeros(1 << 18, "<f4").tobytes()  # 1 MiB storage
    tied = lambda: _pickle({f"w{i}": _tensor("0", 1 << 18, 0, (1 << 18,), (1,)) for i in range(5000)})  # noqa: E731

    def sd_file(mutate):
        def build(d):
            sd = tiny_iresnet_state_dict()
            mutate(sd)
            write_torch_state_dict(sd, d / "backbone.pth")
        return build

    def nan(sd):
        sd["layer2.0.conv1.weight"][0, 0, 0, 0] = np.nan

    def far_block(sd):
        sd.update({k.replace("layer1.0.", "layer1.99999999."): v for k, v in sd.items() if k.startswith("layer1.0.")})

    def colliding_tuples():  # written opcode by opcode: building the dict here would be quadratic too
        one, two = b"J" + struct.pack("<i", -1), b"J" + struct.pack("<i", -2)  # hash(-1) == hash(-2)
        items = b"".join(b"(" + b"".join(two if (i >> b) & 1 else one for b in range(15)) + b"tK\x00"
                         for i in range(1 << 15))
        return b"\x80\x02}(" + items + b"u."

    def ordered_dict_arg():
        return _pickle(_Reduce(collections.OrderedDict, ([((-1, -2), 0), ((-2, -1), 1)],)))

    cases = [
        ("stride-0 view 1e5 x 1e5 over 1 element", _pth(lambda: _pickle({"w": _tensor("0", 1, 0, (10**5, 10**5), (0, 0))}),
                                                         {"0": f4[:4]}), "UnsafeWeightsError"),
        ("overlapping view 5e4 x 5e4 over 1e5 elements",
         _pth(lambda: _pickle({"w": _tensor("0", 10**5, 0, (50_000, 50_000), (1, 1))}),
              {"0": np.zeros(10**5, "<f4").tobytes()}), "UnsafeWeightsError"),
        ("view outside its storage", _pth(lambda: _pickle({"w": _tensor("0", 4, 0, (64,), (1,))}), {"0": f4}),
         "UnsafeWeightsError"),
        ("5000 names viewing one 1 MiB storage", _pth(tied, {"0": mib}), "WeightsFileError"),
        ("storage declaring 2**40 elements in 16 bytes",
         _pth(lambda: _pickle({"w": _tensor("0", 1 << 40, 0, (1 << 20,), (1,))}), {"0": f4}), "WeightsFileError"),
        ("storage numel above 2**62", _pth(lambda: _pickle({"w": _tensor("0", 1 << 63, 0, (4,), (1,))}), {"0": f4}),
         "UnsafeWeightsError"),
        ("tensor of 10000 dimensions", _pth(lambda: _pickle({"w": _tensor("0", 4, 0, (1,) * 10000, (1,) * 10000)}),
                                            {"0": f4}), "UnsafeWeightsError"),
        ("missing storage entry", _pth(lambda: _pickle({"w": _tensor("7", 4, 0, (4,), (1,))}), {"0": f4}),
         "WeightsFileError"),
        ("bool storage holding 2", _pth(lambda: _pickle({"w": _tensor("0", 4, 0, (4,), (1,), _BOOL)}),
                                        {"0": b"\x00\x01\x02\x01"}), "WeightsFileError"),
        ("deflate bomb, declared size 64 MiB", _deflate_bomb_entry(64 << 20), "WeightsFileError"),
        ("deflate bomb, declared 16 bytes", _then(_deflate_bomb_entry(64 << 20),
                                                  _patch_zip("backbone.pth", "archive/data/0", size=16)),
         "WeightsFileError"),
        ("pickle entry declaring 3 GB", _patch_zip("backbone.pth", "archive/data.pkl", size=3 << 30),
         "WeightsFileError"),
        ("encrypted pickle entry", _patch_zip("backbone.pth", "archive/data.pkl", flag=0x1), "WeightsFileError"),
        ("compression method 99", _patch_zip("backbone.pth", "archive/data/0", method=99), "WeightsFileError"),
        ("bzip2 entry", _pth(lambda: _pickle({"w": _tensor("0", 4, 0, (4,), (1,))}), {"0": f4},
                             method=zipfile.ZIP_BZIP2), "WeightsFileError"),
        ("two central records for one storage", _dup_central("backbone.pth", "archive/data/0", "archive/dxta/0"),
         "WeightsFileError"),
        ("CRC mismatch in a storage", lambda d: _flip_last_stored(d / "backbone.pth"), "WeightsFileError"),
        ("zip truncated in its central directory",
         lambda d: (d / "backbone.pth").write_bytes((d / "backbone.pth").read_bytes()[:-40]), "WeightsFileError"),
        ("legacy (not zip) pickle", _raw("backbone.pth", pickle.dumps({"a": 1})), "WeightsFileError"),
        ("empty file", _raw("backbone.pth", b""), "WeightsFileError"),
        ("huge memo index (LONG_BINPUT 2**31-1)", _pth(b"\x80\x02]r\xff\xff\xff\x7f0N."), "WeightsFileError"),
        ("memo get of an unset slot", _pth(b"\x80\x02j\xff\xff\xff\x00."), "WeightsFileError"),
        ("dict of 2**15 colliding tuple keys", _pth(colliding_tuples), "UnsafeWeightsError"),
        ("dict of ints colliding mod 2**61-1", _pth(lambda: _pickle({k * (2**61 - 1): 0 for k in range(2000)})),
         "WeightsFileError"),
        ("OrderedDict built from an argument", _pth(ordered_dict_arg), "UnsafeWeightsError"),
        ("os.system global", _pth(lambda: _pickle(_Reduce(_OS_SYSTEM, ("echo PWNED",)))),
         "UnsafeWeightsError"),
        ("builtins.eval by STACK_GLOBAL", _pth(lambda: pickle.dumps(_Reduce(eval, ("1+1",)), 4)), "UnsafeWeightsError"),
        ("NEWOBJ of OrderedDict", _pth(b"\x80\x02ccollections\nOrderedDict\n)\x81."), "UnsafeWeightsError"),
        ("BUILD on a tensor", _pth(lambda: _pickle(_Reduce(_PARAM, (_tensor("0", 4, 0, (4,), (1,)),), {"x": 1})),
                                   {"0": f4}), "UnsafeWeightsError"),
        ("huge LONG4 int", _pth(b"\x80\x02\x8b\x00\x00\x10\x00" + b"\xff" * (1 << 20) + b"."), "WeightsFileError"),
        ("deep list nesting", _pth(b"\x80\x02" + b"]" * 200_000 + b"."), "WeightsFileError"),
        ("truncated pickle", _pth(lambda: _pickle({"w": _tensor("0", 4, 0, (4,), (1,))})[:-5], {"0": f4}),
         "WeightsFileError"),
        ("not a pickle", _pth(b"\x00\x01garbage"), "WeightsFileError"),
        ("big-endian byteorder", _pth(lambda: _pickle({"w": _tensor("0", 4, 0, (4,), (1,))}), {"0": f4},
                                      byteorder=b"big"), "WeightsFileError"),
        ("two data.pkl", _pth(b"\x80\x02}.", extra=[("other/data.pkl", b"\x80\x02}.")]), "WeightsFileError"),
        ("module.w and w", _pth(lambda: _pickle({"module.w": _tensor("0", 4, 0, (4,), (1,)),
                                                 "w": _tensor("0", 4, 0, (4,), (1,))}), {"0": f4}),
         "WeightsFileError"),
        ("NaN weight", sd_file(nan), "WeightsFileError"),
        ("block numbered 99999999", sd_file(far_block), "WeightsFileError"),
    ]
    return [Case("pth", n, _then(_drop_pickles, b), e, "backbone.pth") for n, b, e in cases]


def _drop_pickles(d):
    for p in d.glob("*.pkl"):
        p.unlink()


def _flip_last_stored(p):
    """Flip one byte inside the data of the last storage entry (a CRC mismatch)."""
    with zipfile.ZipFile(p) as z:
        info = [i for i in z.infolist() if "/data/" in i.filename][-1]
    data = bytearray(p.read_bytes())
    nlen, xlen = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + nlen + xlen] ^= 0xFF
    p.write_bytes(bytes(data))


# --- crafted .onnx inputs
def _onnx_edit(edit):
    def build(d):
        import onnx

        model = onnx.load(str(d / "r.onnx"))
        out = edit(model, d)
        if isinstance(out, (bytes, bytearray)):
            (d / "r.onnx").write_bytes(out)
        else:
            onnx.save(out if out is not None else model, str(d / "r.onnx"))
    return build


def _node(model, op, k=0):
    return [n for n in model.graph.node if n.op_type == op][k]


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _set_init(model, name, value):
    from onnx import numpy_helper

    t = _init(model, name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def _external(t, location):
    from onnx import TensorProto

    t.ClearField("raw_data")
    t.ClearField("float_data")
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(t.dims))))):
        e = t.external_data.add()
        e.key, e.value = k, v


def _onnx_cases():
    from onnx import TensorProto, helper

    def drop_weight(m, d):
        conv = _node(m, "Conv", 2)
        del conv.input[1:]

    def constant_without_output(m, d):
        m.graph.node.insert(0, helper.make_node("Constant", [], [], name="lonely_constant",
                                                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])))

    def scalar_conv_weight(m, d):
        _set_init(m, _node(m, "Conv", 1).input[1], np.float32(0.5))

    def bn_rank(m, d):
        bn = _node(m, "BatchNormalization", 3)
        c = int(np.prod(_init(m, bn.input[1]).dims))
        _set_init(m, bn.input[1], np.ones((c, 1), np.float32))

    def nan_weight(m, d):
        name = _node(m, "Conv", 3).input[1]
        from onnx import numpy_helper

        w = numpy_helper.to_array(_init(m, name)).copy()
        w.reshape(-1)[5] = np.nan
        _set_init(m, name, w)

    def inf_fc(m, d):
        from onnx import numpy_helper

        name = _node(m, "Gemm").input[1]
        w = numpy_helper.to_array(_init(m, name)).copy()
        w[0, 0] = np.inf
        _set_init(m, name, w)

    def bn_eps(value):
        def edit(m, d):
            bn = _node(m, "BatchNormalization", 2)
            for a in bn.attribute:
                if a.name == "epsilon":
                    a.f = value
        return edit

    def negative_var(m, d):
        from onnx import numpy_helper

        bn = _node(m, "BatchNormalization", 1)
        v = numpy_helper.to_array(_init(m, bn.input[4])).copy()
        v[0] = -1.0
        _set_init(m, bn.input[4], v)

    def image_size(h, w):
        def edit(m, d):
            dims = m.graph.input[0].type.tensor_type.shape.dim
            dims[2].dim_value, dims[3].dim_value = h, w
        return edit

    def external_init(location):
        def edit(m, d):
            (d / "w.bin").write_bytes(b"\0" * 4096)
            _external(_init(m, _node(m, "Conv", 0).input[1]), location(d))
        return edit

    def external_constant_in_function(m, d):
        (d / "w.bin").write_bytes(b"\0" * 64)
        value = helper.make_tensor("v", TensorProto.FLOAT, [4], [0.0] * 4)
        _external(value, str(d / "w.bin"))
        body = [helper.make_node("Constant", [], ["k"], value=value), helper.make_node("Add", ["x", "k"], ["y"])]
        m.functions.append(helper.make_function("loc", "AddK", ["x"], ["y"], body, [helper.make_opsetid("", 17)]))
        m.opset_import.append(helper.make_opsetid("loc", 1))
        out = m.graph.output[0].name
        m.graph.node[-1].output[0] = out + "_pre"
        m.graph.node.append(helper.make_node("AddK", [out + "_pre"], [out], domain="loc", name="addk"))

    def external_constant_in_function_relative(m, d):
        external_constant_in_function(m, d)
        _external(m.functions[-1].node[0].attribute[0].t, "w.bin")  # the old reader read ./w.bin

    def external_in_subgraph(m, d):
        value = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
        _external(value, "w.bin")
        (d / "w.bin").write_bytes(b"\0" * 16)
        branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=value)], "b", [],
                                   [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
        m.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))

    def not_in_order_chain(n):
        def edit(m, d):
            out = m.graph.output[0].name
            m.graph.node[-1].output[0] = "chain_0"
            chain = [helper.make_node("Relu", [f"chain_{i}"], [f"chain_{i + 1}" if i + 1 < n else out])
                     for i in range(n)]
            m.graph.node.extend(chain[::-1])  # reverse order: quadratic for a pass-based sort
        return edit

    def fold_bomb(m, d):
        m.graph.initializer.append(helper.make_tensor("big", TensorProto.FLOAT, [1 << 18], np.zeros(1 << 18, "<f4")
                                                      .tobytes(), raw=True))
        prev = "big"
        for i in range(40):
            m.graph.node.append(helper.make_node("Concat", [prev, prev], [f"dbl{i}"], axis=0, name=f"concat{i}"))
            prev = f"dbl{i}"

    def broadcast_bomb(m, d):
        m.graph.initializer.extend([
            helper.make_tensor("col", TensorProto.FLOAT, [100_000, 1], np.zeros(100_000, "<f4").tobytes(), raw=True),
            helper.make_tensor("row", TensorProto.FLOAT, [1, 100_000], np.zeros(100_000, "<f4").tobytes(), raw=True)])
        m.graph.node.append(helper.make_node("Mul", ["col", "row"], ["outer"], name="outer_product"))

    def expand_bomb(m, d):
        m.graph.initializer.extend([helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
                                    helper.make_tensor("shape", TensorProto.INT64, [2], [10**6, 10**6])])
        m.graph.node.append(helper.make_node("Expand", ["one", "shape"], ["huge"], name="expand_huge"))

    def recursive_function(m, d):
        f = helper.make_function("loc", "F", ["x"], ["y"], [helper.make_node("F", ["x"], ["y"], domain="loc")],
                                 [helper.make_opsetid("", 17)])
        m.functions.append(f)
        m.opset_import.append(helper.make_opsetid("loc", 1))
        m.graph.node.append(helper.make_node("F", ["input.1"], ["fy"], domain="loc", name="call_f"))

    def exponential_function(m, d):
        m.opset_import.append(helper.make_opsetid("loc", 1))
        m.functions.append(helper.make_function("loc", "F0", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
                                                [helper.make_opsetid("", 17)]))
        for k in range(1, 31):
            body = [helper.make_node(f"F{k - 1}", ["x"], ["t"], domain="loc"),
                    helper.make_node(f"F{k - 1}", ["t"], ["y"], domain="loc")]
            m.functions.append(helper.make_function("loc", f"F{k}", ["x"], ["y"], body, [helper.make_opsetid("", 17)]))
        m.graph.node.append(helper.make_node("F30", ["input.1"], ["fy"], domain="loc", name="call_f30"))

    def huge_dims(m, d):
        t = _init(m, _node(m, "Conv", 0).input[1])
        t.ClearField("dims")
        t.dims.extend([1 << 31, 1 << 31, 3, 3])

    def negative_dims(m, d):
        t = _init(m, _node(m, "Conv", 0).input[1])
        t.dims[0] = -4

    def string_weight(m, d):
        t = _init(m, _node(m, "Conv", 0).input[1])
        t.CopyFrom(helper.make_tensor(t.name, TensorProto.STRING, [1], [b"x"]))

    def gather_oob(m, d):
        m.graph.initializer.extend([helper.make_tensor("gx", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]),
                                    helper.make_tensor("gi", TensorProto.INT64, [1], [99])])
        m.graph.node.append(helper.make_node("Gather", ["gx", "gi"], ["gy"], name="gather_oob"))

    def float_strides(m, d):
        from onnx import AttributeProto

        conv = _node(m, "Conv", 1)
        a = next(a for a in conv.attribute if a.name == "strides")
        a.ClearField("ints")
        a.type, a.f = AttributeProto.FLOAT, 2.0

    def divide_by_zero(m, d):
        m.graph.initializer.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
        first = _node(m, "Conv", 0)
        m.graph.node.insert(0, helper.make_node("Div", ["input.1", "zero"], ["scaled0"], name="input_div0"))
        first.input[0] = "scaled0"

    def two_inputs(m, d):
        m.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))

    def cycle(m, d):
        m.graph.node.extend([helper.make_node("Relu", ["cy_b"], ["cy_a"], name="cycle_a"),
                             helper.make_node("Relu", ["cy_a"], ["cy_b"], name="cycle_b")])

    def too_many_nodes(m, d):
        m.graph.node.extend(helper.make_node("Identity", ["input.1"], [f"n{i}"]) for i in range(100_001))

    cases = [
        ("not a protobuf", _raw("r.onnx", b"not a protobuf at all \xff\xfe"), "WeightsFileError", 0),
        ("truncated protobuf", _onnx_edit(lambda m, d: m.SerializeToString()[:-7]), "WeightsFileError", 0),
        ("Conv node missing its weight input", _onnx_edit(drop_weight), "WeightsFileError", "Conv"),
        ("Constant without output", _onnx_edit(constant_without_output), "WeightsFileError", "lonely_constant"),
        ("scalar conv weight", _onnx_edit(scalar_conv_weight), "WeightsFileError", "Conv"),
        ("BatchNormalization scale of rank 2", _onnx_edit(bn_rank), "WeightsFileError", "BatchNormalization"),
        ("NaN conv weight", _onnx_edit(nan_weight), "WeightsFileError", "Conv"),
        ("inf fc weight", _onnx_edit(inf_fc), "WeightsFileError", "fc"),
        ("negative BN epsilon", _onnx_edit(bn_eps(-1e-3)), "WeightsFileError", "BatchNormalization"),
        ("NaN BN epsilon", _onnx_edit(bn_eps(float("nan"))), "WeightsFileError", "BatchNormalization"),
        ("negative BN variance", _onnx_edit(negative_var), "WeightsFileError", "BatchNormalization"),
        ("image size 2**40", _onnx_edit(image_size(1 << 40, 1 << 40)), "WeightsFileError", "input.1"),
        ("image size that does not fit fc", _onnx_edit(image_size(1024, 1024)), "WeightsFileError", "input.1"),
        ("image size -16", _onnx_edit(image_size(-16, 16)), "WeightsFileError", "input.1"),
        ("external initializer, relative", _onnx_edit(external_init(lambda d: "w.bin")), "ExternalDataError", 0),
        ("external initializer, absolute", _onnx_edit(external_init(lambda d: str(d / "w.bin"))),
         "ExternalDataError", 0),
        ("external Constant in a local function (absolute)", _onnx_edit(external_constant_in_function),
         "ExternalDataError", 0),
        ("external Constant in a local function (relative)", _onnx_edit(external_constant_in_function_relative),
         "ExternalDataError", 0),
        ("external Constant in an If branch", _onnx_edit(external_in_subgraph), "ExternalDataError", 0),
        ("20,000 Relu nodes in reverse order", _onnx_edit(not_in_order_chain(20_000)), "WeightsFileError", 0),
        ("100,001 extra nodes", _onnx_edit(too_many_nodes), "WeightsFileError", 0),
        ("Concat doubling 40 times", _onnx_edit(fold_bomb), "WeightsFileError", 0),
        ("Mul outer product 1e5 x 1e5", _onnx_edit(broadcast_bomb), "WeightsFileError", "outer_product"),
        ("Expand to 1e12 elements", _onnx_edit(expand_bomb), "WeightsFileError", "expand_huge"),
        ("recursive local function", _onnx_edit(recursive_function), "WeightsFileError", 0),
        ("local function expanding to 2**30 nodes", _onnx_edit(exponential_function), "WeightsFileError", 0),
        ("initializer dims 2**31 x 2**31", _onnx_edit(huge_dims), "WeightsFileError", 0),
        ("initializer negative dims", _onnx_edit(negative_dims), "WeightsFileError", 0),
        ("string initializer", _onnx_edit(string_weight), "WeightsFileError", 0),
        ("Gather index out of range", _onnx_edit(gather_oob), "WeightsFileError", "gather_oob"),
        ("strides attribute of type float", _onnx_edit(float_strides), "WeightsFileError", "Conv"),
        ("input divided by 0", _onnx_edit(divide_by_zero), "WeightsFileError", "input_div0"),
        ("two image inputs", _onnx_edit(two_inputs), "WeightsFileError", 0),
        ("graph cycle", _onnx_edit(cycle), "WeightsFileError", "cycle_"),
    ]
    return [Case("onnx", n, b, e, "r.onnx", 30.0, node or None) for n, b, e, node in cases]


def crafted_cases(reader=None):
    """The crafted inputs (all readers, or one)."""
    makers = {"bin": _bin_cases, "recordio": _recordio_cases, "tfrecord": _tfrecord_cases,
              "folder": _folder_cases, "lfw": _lfw_cases, "ijb": _ijb_cases, "megaface": _megaface_cases,
              "pth": _pth_cases, "onnx": _onnx_cases}
    out = []
    for r in ([reader] if reader else READERS):
        out += makers[r]()
    return out


# ----------------------------------------------------------------------------- mutation
MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "int32", "int64", "dup")
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


def apply_mutations(data, ops):
    """Apply ``[(kind, position in [0, 1], payload bytes)]`` edits to ``data`` (deterministic)."""
    b = bytearray(data)
    for kind, frac, payload in ops:
        n = len(b)
        pos = min(int(frac * n), max(n - 1, 0))
        if kind == "flip" and n:
            b[pos] ^= 1 << ((payload[0] if payload else 0) % 8)
        elif kind == "set" and n:
            b[pos:pos + len(payload)] = payload
        elif kind == "insert":
            b[pos:pos] = payload or b"\0"
        elif kind == "delete" and n:
            del b[pos:pos + max(1, len(payload))]
        elif kind == "truncate":
            del b[pos:]
        elif kind in ("int32", "int64") and n:
            w = 4 if kind == "int32" else 8
            v = _INTERESTING[(payload[0] if payload else 0) % len(_INTERESTING)] % (1 << (8 * w))
            b[pos:pos + w] = v.to_bytes(w, "little" if (payload[1:2] or b"\0")[0] % 2 else "big")
        elif kind == "dup" and n:
            b[pos:pos] = b[pos:pos + 64 * (1 + (payload[0] if payload else 0) % 16)]
    return bytes(b)


def random_ops(rng, max_ops=6):
    """Random mutation ops for ``apply_mutations`` (used by benchmarks/fuzz.py)."""
    ops = []
    for _ in range(rng.randint(1, max_ops)):
        ops.append((rng.choice(MUTATIONS), rng.random(), bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))))
    return ops


# ----------------------------------------------------------------------------- the worker
TYPED, BAD, ACCEPTED, OSERR, WRONG, INVARIANT, SLOW = (
    "typed", "bad_records", "accepted", "oserror", "wrong_type", "invariant", "slow")


def _vm_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux / not permitted
        pass


def _bad_list(summary):
    return summary.get("bad", []) + summary.get("unreadable", []) if isinstance(summary, dict) else []


def run_one(reader, d, expect_error=None, expect_file=None, invariants=True):
    """Run one input; returns ``{"outcome", "type", "message", "seconds", "peak_mb"}``."""
    from keras_facemargin.errors import UntrustedFileError

    _reset_peak()
    base = _vm_kb("VmRSS")
    t0 = time.perf_counter()
    res = {}
    try:
        summary = call_reader(reader, d)
        bad = _bad_list(summary)
        res["outcome"] = BAD if bad else ACCEPTED
        res["message"] = "; ".join(bad[:3])[:600]
        if invariants:
            try:
                check_accepted(reader, summary)
            except AssertionError as e:
                res["outcome"], res["message"] = INVARIANT, str(e)[:600]
    except UntrustedFileError as e:
        res["outcome"], res["type"], res["message"] = TYPED, type(e).__name__, str(e)[:600]
        res["mro"] = [c.__name__ for c in type(e).__mro__]
    except OSError as e:
        res["outcome"], res["type"], res["message"] = OSERR, type(e).__name__, str(e)[:600]
    except BaseException as e:  # noqa: BLE001 - anything else is a failure to report
        if isinstance(e, KeyboardInterrupt):
            raise
        res["outcome"], res["type"] = WRONG, type(e).__name__
        res["message"] = (str(e)[:300] + " | " + "".join(traceback.format_exception(e))[-900:])
    res["seconds"] = round(time.perf_counter() - t0, 3)
    res["peak_mb"] = round((_vm_kb("VmHWM") - base) / 1024, 1)
    if expect_file is not None:
        res["names_file"] = expect_file in res.get("message", "")
    return res


def _fresh(reader, tmp):
    d = Path(tempfile.mkdtemp(dir=tmp))
    seed_files(reader, d)
    return d


def _emit(out, rec):
    out.write(json.dumps(rec, default=str) + "\n")
    out.flush()


def run_crafted(out, tmp, readers):
    for case in [c for r in readers for c in crafted_cases(r)]:
        _emit(out, {"start": case.name, "reader": case.reader})
        d = _fresh(case.reader, tmp)
        try:
            try:
                case.build(d)
            except Exception as e:  # noqa: BLE001 - a broken case is reported, the run goes on
                res = {"outcome": "build_error", "message": f"{type(e).__name__}: {e}"}
            else:
                res = run_one(case.reader, d, case.error, case.file)
                if case.node:
                    res["names_node"] = case.node in res.get("message", "")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        res.update(kind="crafted", reader=case.reader, case=case.name, expect=case.error, file=case.file,
                   max_seconds=case.max_seconds, node=case.node)
        _emit(out, res)


def run_mutations(out, tmp, readers, examples, seed):
    """A bounded, seeded hypothesis run per reader over mutations of the seed files."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    for reader in readers:
        seed_dir = _fresh(reader, tmp)
        files = [p.relative_to(seed_dir) for p in seed_files(reader, seed_dir)]
        originals = {f: (seed_dir / f).read_bytes() for f in files}
        counts = {TYPED: 0, BAD: 0, ACCEPTED: 0, OSERR: 0}
        failures = []
        op = st.tuples(st.sampled_from(MUTATIONS), st.floats(0, 1), st.binary(max_size=8))

        @hypothesis_seed(seed)
        @settings(max_examples=examples, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(files), st.lists(op, min_size=1, max_size=6))
        def one(target, ops):
            d = Path(tempfile.mkdtemp(dir=tmp))
            try:
                shutil.copytree(seed_dir, d, dirs_exist_ok=True)
                (d / target).write_bytes(apply_mutations(originals[target], ops))
                res = run_one(reader, d)
            finally:
                shutil.rmtree(d, ignore_errors=True)
            if res["outcome"] in counts:
                counts[res["outcome"]] += 1
            else:
                failures.append({"file": str(target), "ops": repr(ops)[:400], **res})

        one()
        shutil.rmtree(seed_dir, ignore_errors=True)
        _emit(out, {"kind": "mutation", "reader": reader, "examples": examples, "counts": counts,
                    "failures": failures[:5], "n_failures": len(failures)})


def set_memory_limit(headroom_mb):
    """Cap the address space at the current size + ``headroom_mb``; returns the cap in MiB."""
    import resource

    cap = _vm_kb("VmSize") * 1024 + headroom_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap >> 20


def warm_up(tmp):
    """Import everything and run each reader once on its seed (so the limit is set after imports)."""
    import tensorflow as tf  # noqa: F401

    import keras_facemargin  # noqa: F401

    for r in READERS:
        d = _fresh(r, tmp)
        run_one(r, d)
        shutil.rmtree(d, ignore_errors=True)


def worker_main(argv=None):
    """``python tests/untrusted_cases.py [--crafted] [--mutations N] [--seed S] [--readers a,b]
    [--headroom-mb M]``: one JSON line per result on stdout."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--crafted", action="store_true")
    ap.add_argument("--mutations", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--headroom-mb", type=int, default=1536)
    a = ap.parse_args(argv)
    readers = [r for r in a.readers.split(",") if r]
    out = sys.stdout
    tmp = tempfile.mkdtemp(prefix="kfm_untrusted_")
    try:
        warm_up(tmp)
        cap = set_memory_limit(a.headroom_mb)
        try:  # control: an allocation beyond the headroom must fail under the limit
            np.ones((a.headroom_mb + 256) << 20, np.uint8)
            control = "allocated"
        except MemoryError:
            control = "MemoryError"
        _emit(out, {"kind": "limit", "rlimit_as_mb": cap, "vm_size_mb": _vm_kb("VmSize") >> 10,
                    "headroom_mb": a.headroom_mb, "control": control})
        if a.crafted:
            run_crafted(out, tmp, readers)
        if a.mutations:
            run_mutations(out, tmp, readers, a.mutations, a.seed)
        _emit(out, {"kind": "done"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    worker_main()
