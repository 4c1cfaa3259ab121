"""Image-folder training roots whose identity folders have any name: undecodable bytes, tabs, newlines.

Each case fails without the fix: the fingerprint encoded names as strict UTF-8 (UnicodeEncodeError on a
non-UTF-8 folder name, so `kfm train` crashed), and identities.tsv wrote names raw (a newline split a
row in two, a tab added a column). The names must train, be reported one per row and read back exactly.
"""

import hashlib
import json
import os
import sys

import cv2
import numpy as np
import pytest

from keras_facemargin.data.formats.folders import escape_identity_name, unescape_identity_name
from keras_facemargin.data.training_set import load_training_set, read_identities_tsv

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names (arbitrary bytes)")

# Folder names as bytes: undecodable Latin-1, a newline, a tab, a backslash sequence, a carriage return, UTF-8.
NAMES = [b"caf\xe9", b"new\nline", b"tab\tname", b"back\\nslash", b"cr\rname", "\u00e9t\u00e9".encode(), b"plain"]


def make_root(root, names=NAMES, per_identity=2, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for i in range(per_identity):
            ok, buf = cv2.imencode(".png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            assert ok
            with open(os.path.join(folder, b"%d.png" % i), "wb") as f:
                f.write(buf.tobytes())
    return root


def test_escaping_is_reversible_and_leaves_ordinary_names_alone():
    for raw in NAMES + [b"x\xff\xfe", b"\\x41", b"\\", b"a\\tb"]:
        name = os.fsdecode(raw)
        text = escape_identity_name(name)
        assert "\t" not in text and "\n" not in text and "\r" not in text
        text.encode("utf-8")  # strict: writable as UTF-8
        assert unescape_identity_name(text) == name
    assert escape_identity_name("Aaron_Eckhart") == "Aaron_Eckhart"
    assert escape_identity_name("\u00e9t\u00e9") == "\u00e9t\u00e9"
    assert escape_identity_name(os.fsdecode(b"caf\xe9")) == "caf\\xe9"  # the documented form
    assert escape_identity_name("new\nline") == "new\\nline"
    with pytest.raises(ValueError):
        unescape_identity_name("bad\\q")


def test_fingerprint_of_undecodable_names(tmp_path):
    ts = load_training_set(make_root(tmp_path / "a"))
    assert sorted(ts.class_names) == sorted(os.fsdecode(n) for n in NAMES)
    fp = ts.fingerprint()  # UnicodeEncodeError before the fix
    # Reference from the definition: the names as the file system's bytes, then counts, labels, size.
    h = hashlib.sha256(b"\n".join(os.fsencode(n) for n in ts.class_names))
    h.update(ts.class_counts.tobytes())
    h.update(ts.labels.tobytes())
    h.update(repr(ts.image_hw).encode())
    assert fp == h.hexdigest()
    # Another byte in one folder name is another data set.
    other = load_training_set(make_root(tmp_path / "b", [b"caf\xe8"] + NAMES[1:]))
    assert other.fingerprint() != fp


def test_fingerprint_of_utf8_names_is_unchanged(tmp_path):
    """Runs started before the fix resume: for decodable names the fingerprint is the old UTF-8 one."""
    ts = load_training_set(make_root(tmp_path / "a", [b"alice", "\u00e9t\u00e9".encode(), b"bob"]))
    h = hashlib.sha256("\n".join(ts.class_names).encode("utf-8"))
    for part in (ts.class_counts.tobytes(), ts.labels.tobytes(), repr(ts.image_hw).encode()):
        h.update(part)
    assert ts.fingerprint() == h.hexdigest()


def test_identities_tsv_one_row_per_identity_and_names_round_trip(tmp_path):
    ts = load_training_set(make_root(tmp_path / "a"))
    ts.write_report(tmp_path / "run")
    text = (tmp_path / "run" / "identities.tsv").read_bytes().decode("utf-8")  # strict UTF-8
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 1 + ts.num_classes + 1
    for line in lines[1:-1]:
        assert len(line.split("\t")) == 4, line
    rows = read_identities_tsv(tmp_path / "run" / "identities.tsv")
    assert [r["identity"] for r in rows] == ts.class_names
    assert [r["label"] for r in rows] == list(range(ts.num_classes))
    assert [r["images"] for r in rows] == ts.class_counts.tolist() == [2] * len(NAMES)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["num_classes"] == len(NAMES) and report["fingerprint"] == ts.fingerprint()
    assert "\n".join(ts.summary_lines())  # printable


def test_duplicates_tsv_with_control_characters(tmp_path):
    a = make_root(tmp_path / "a", [b"new\nline", b"caf\xe9"])
    b = make_root(tmp_path / "b", [b"new\nline", b"caf\xe9"], seed=1)  # same (identity, file): duplicates
    ts = load_training_set([a, b])
    assert len(ts.duplicates) == 4
    ts.write_report(tmp_path / "run")
    lines = (tmp_path / "run" / "duplicates.tsv").read_bytes().decode("utf-8").split("\n")
    assert len(lines) == 1 + 4 + 1
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == 5 for r in rows)
    assert sorted(unescape_identity_name(r[0]) for r in rows) == sorted(d["identity"] for d in ts.duplicates)
    assert {unescape_identity_name(r[3]) for r in rows} == {d["dropped"] for d in ts.duplicates}


def test_trainer_trains_and_resumes_on_such_names(tmp_path):
    from keras_facemargin.training import Trainer
    from keras_facemargin.training.config import get_experiment

    root = make_root(tmp_path / "faces")
    cfg = get_experiment(
        "ms1mv2", data=[str(root)], name="tiny", output=str(tmp_path / "runs"), loss="kappaface",
        backbone="iresnet18", backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [4, 8, 8, 8]},
        embedding_dim=8, image_size=16, scale=16.0, batch_size=2, lr_reference_batch=2, epochs=1, lr_steps=(5,),
        save_every_steps=2, verification_sets="", plots=False, verbose=0)
    results = Trainer(cfg).train()
    assert results["data"]["num_classes"] == len(NAMES)
    rows = read_identities_tsv(cfg.run_dir / "identities.tsv")
    assert sorted(r["identity"] for r in rows) == sorted(os.fsdecode(n) for n in NAMES)
    # The same command again: the fingerprint check of the resume accepts the same data (no DataSourceError).
    again = Trainer(cfg.replace(epochs=2)).train()
    assert again["resumed_from_step"] > 0 and again["data"]["fingerprint"] == results["data"]["fingerprint"]
