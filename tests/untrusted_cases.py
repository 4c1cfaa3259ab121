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
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

READERS = ("bin", "recordio", "tfrecord", "folder", "lfw", "ijb", "megaface")
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
        from keras_facemargin.data.recordio import write_recordio

        items = [(lab, _jpg(seed=i) if i % 2 else _png(seed=i)) for i, lab in enumerate([0, 0, 1, 1, 2, 2])]
        write_recordio(d, items, image_size=(SIZE, SIZE))
        return [d / "train.rec", d / "train.idx", d / "property"]
    if reader == "tfrecord":
        from keras_facemargin.data.tfrecord import write_tfrecords

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
        from keras_facemargin.data.recordio import RecordIOReader, RecordIORecordError, decode_image_into

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
        from keras_facemargin.data.tfrecord import make_tfrecord_dataset

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
        from keras_facemargin.data.sources import load_training_set

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


# ----------------------------------------------------------------------------- crafted inputs
@dataclass
class Case:
    """A crafted input: ``build(d)`` writes it over a seed; ``error`` is the class name expected
    (raised, or ``"bad"``: collected as bad records), ``file`` the name the message must contain."""

    reader: str
    name: str
    build: object
    error: str
    file: str
    max_seconds: float = 20.0


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
    from keras_facemargin.data.recordio import write_recordio

    return write_recordio(d, items, image_size=(SIZE, SIZE), **kw)


def _ir(flag_labels, label, id_, data=b""):
    from keras_facemargin.data.recordio import _pack_payload

    return _pack_payload(flag_labels, label, id_, 0, data)


def _rec_set(d, records, idx_lines=None, prop=None):
    """Write ``train.rec`` from ``[(key, payload_bytes_or_framed)]``, its ``.idx`` and ``property``."""
    from keras_facemargin.data.recordio import pack_record

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
        from keras_facemargin.data.recordio import MAGIC

        body = b"".join(struct.pack("<II", MAGIC, ((1 if i == 0 else 3 if i == n - 1 else 2) << 29) | 4)
                        + (_ir(None, 0, 1)[:4] if i == 0 else b"abcd") for i in range(n))
        (d / "train.rec").write_bytes(body)
        (d / "train.idx").write_text("".join(f"{k}\t0\n" for k in range(1, n + 1)))
        (d / "property").unlink()

    def parts_n_keys(d, n=20_000):
        from keras_facemargin.data.recordio import MAGIC

        body = b"".join(struct.pack("<II", MAGIC, ((1 if i == 0 else 3 if i == n - 1 else 2) << 29) | 4) + b"abcd"
                        for i in range(n))
        (d / "train.rec").write_bytes(body)
        (d / "train.idx").write_text("".join(f"{k}\t{12 * (k - 1)}\n" for k in range(1, n + 1)))
        (d / "property").unlink()

    def overlapping_lengths(d, n=20_000):
        from keras_facemargin.data.recordio import MAGIC

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
    from keras_facemargin.data.tfrecord import encode_example

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


def crafted_cases(reader=None):
    """The crafted inputs (all readers, or one)."""
    makers = {"bin": _bin_cases, "recordio": _recordio_cases, "tfrecord": _tfrecord_cases,
              "folder": _folder_cases, "lfw": _lfw_cases, "ijb": _ijb_cases, "megaface": _megaface_cases}
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
        finally:
            shutil.rmtree(d, ignore_errors=True)
        res.update(kind="crafted", reader=case.reader, case=case.name, expect=case.error, file=case.file,
                   max_seconds=case.max_seconds)
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
