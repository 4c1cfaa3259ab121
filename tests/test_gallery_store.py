"""The SQLite gallery: incremental changes, concurrent writers, exact search, validation on load.

No model is needed: galleries are made of random unit vectors with a verifier configuration; the
search is compared with NumPy brute force written from the definition; hostile files are crafted.
"""

import json
import multiprocessing
import sqlite3
import threading
import zipfile

import numpy as np
import pytest

from keras_facemargin.errors import GalleryError
from keras_facemargin.inference import gallery_files
from keras_facemargin.inference.gallery import Gallery
from keras_facemargin.inference.gallery_search import top_k_search
from keras_facemargin.inference.gallery_store import GalleryStore

DIM = 8
CONFIG = {"model": "m", "embedding_dim": DIM, "image_size": [8, 8], "normalization": {"mean": 127.5, "std": 128.0},
          "flip": True}


def unit(rng, n, d=DIM):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def probe():
    return unit(np.random.default_rng(99), 1)[0]


class StubVerifier:
    """What the gallery asks of a verifier: config() and probe_embedding()."""

    def __init__(self, probe_vector=None, config=CONFIG):
        self._probe, self._config = probe() if probe_vector is None else probe_vector, config

    def config(self):
        return dict(self._config)

    def probe_embedding(self):
        return self._probe


def test_incremental_add_remove_templates_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    e = unit(rng, 5)
    path = tmp_path / "g.db"
    store = GalleryStore.create(path, CONFIG, probe())
    store.add_photos("alice", [("k0", "a0", 1, e[0]), ("k1", "a1", 1, e[1])])
    store.add_photos("bob", [("k2", "b0", 1, e[2])])
    store.add_photos("alice", [("k3", "a2", 1, e[3]), ("k1", "a1", 1, e[1])])  # k1 again: replaced, not doubled
    g = Gallery.load(path)
    ref = e[0] + e[1] + e[3]
    assert g.identities == ["alice", "bob"] and g.counts.tolist() == [3, 1]
    np.testing.assert_allclose(g.embeddings, np.stack([ref / np.linalg.norm(ref), e[2]]), atol=1e-6)
    assert store.remove("alice", [("k0", None)])["num_images"] == 2
    ref = e[1] + e[3]
    np.testing.assert_allclose(Gallery.load(path).embeddings[0], ref / np.linalg.norm(ref), atol=1e-6)
    with pytest.raises(GalleryError) as err:
        store.remove("carol")
    assert err.value.reason == "unknown_identity"
    store.remove("bob")
    assert Gallery.load(path).identities == ["alice"]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path, worker, n):
    rng = np.random.default_rng(worker)
    store = GalleryStore.create(path, CONFIG, probe(), busy_timeout=120)
    for i in range(n):
        store.add_photos(f"w{worker}_{i % 3}", [(f"k{worker}_{i}", f"p{i}", 1, unit(rng, 1)[0])])


def test_concurrent_processes_and_threads_never_corrupt(tmp_path):
    path = str(tmp_path / "g.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 12)) for w in range(4)]
    threads = [threading.Thread(target=_writer, args=(path, 10 + w, 12)) for w in range(2)]
    for p in procs + threads:
        p.start()
    for p in procs + threads:
        p.join(300)
    assert all(p.exitcode == 0 for p in procs)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = {k for (k,) in conn.execute("SELECT key FROM photos")}
    assert keys == {f"k{w}_{i}" for w in (0, 1, 2, 3, 10, 11) for i in range(12)}
    g = Gallery.load(path)
    assert len(g) == 18 and g.counts.tolist() == [4] * 18


def test_search_matches_numpy_brute_force():
    rng = np.random.default_rng(1)
    t = unit(rng, 3000).astype(np.float32)
    q = rng.normal(size=(7, DIM))
    idx, scores = top_k_search(t, q, top_k=5, score_budget=100)  # many chunks
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = qn @ t.astype(np.float64).T
    ref_idx = np.argsort(-ref, axis=1)[:, :5]
    assert np.array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_idx, axis=1), atol=1e-12)
    g = Gallery([f"id{i}" for i in range(3000)], t, np.ones(3000), CONFIG, probe())
    assert [c["identity"] for c in g.search(q[0], top_k=3)[0]] == [f"id{i}" for i in ref_idx[0, :3]]


def _legacy_npz(path, embeddings=None, probe_vector=None, meta=None, compress=False):
    rng = np.random.default_rng(2)
    emb = unit(rng, 2) if embeddings is None else embeddings
    meta = {"format": "keras_facemargin.gallery", "version": 1, "config": CONFIG} if meta is None else meta
    save = np.savez_compressed if compress else np.savez
    save(path, embeddings=emb.astype(np.float32), counts=np.ones(len(emb), np.int64),
         identities=np.array([f"p{i}" for i in range(len(emb))]),
         probe=(probe() if probe_vector is None else probe_vector).astype(np.float32),
         metadata=np.array(json.dumps(meta)))
    return path


def test_legacy_npz_imports_and_is_read_only(tmp_path):
    old = _legacy_npz(tmp_path / "old.npz")
    g = Gallery.load(old, StubVerifier())
    assert g.format == "npz" and g.identities == ["p0", "p1"]
    with pytest.raises(GalleryError) as err:
        GalleryStore(old)
    assert err.value.reason == "legacy_gallery"
    g.save(tmp_path / "new.db")
    g2 = Gallery.load(tmp_path / "new.db")
    assert g2.format == "sqlite" and np.allclose(g2.embeddings, g.embeddings, atol=1e-6)


def _refused(path, reason="gallery_format", match=None):
    with pytest.raises(GalleryError, match=match) as err:
        Gallery.load(path)
    assert err.value.reason == reason and str(path) in str(err.value), err.value
    return err.value


def test_hostile_galleries_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    _refused(_legacy_npz(tmp_path / "scaled.npz", embeddings=unit(rng, 2) * 1000), match="unit norm")
    _refused(_legacy_npz(tmp_path / "noconfig.npz", meta={"format": "keras_facemargin.gallery", "version": 1}),
             match="configuration")
    _refused(_legacy_npz(tmp_path / "listconfig.npz", meta={"format": "keras_facemargin.gallery", "version": 1,
                                                            "config": [1, 2]}), match="JSON object")
    deep = {"format": "keras_facemargin.gallery", "version": 1, "config": CONFIG}
    text = json.dumps(deep)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
    p = tmp_path / "deep.npz"
    np.savez(p, embeddings=unit(rng, 2).astype(np.float32), counts=np.ones(2, np.int64),
             identities=np.array(["a", "b"]), probe=probe().astype(np.float32), metadata=np.array(text))
    _refused(p, match="nested")
    _refused(_legacy_npz(tmp_path / "dim.npz", embeddings=unit(rng, 2, DIM + 1)), match="shape")
    nan_probe = np.full(DIM, np.nan)
    _refused(_legacy_npz(tmp_path / "nanprobe.npz", probe_vector=nan_probe), match="probe")
    # a zip bomb: embeddings.npy inflates 51 MB of zeros from ~50 kB; refused from the zip directory
    bomb = tmp_path / "bomb.npz"
    _legacy_npz(bomb)
    with zipfile.ZipFile(tmp_path / "bomb2.npz", "w", zipfile.ZIP_DEFLATED) as out, zipfile.ZipFile(bomb) as src:
        for info in src.infolist():
            if info.filename != "embeddings.npy":
                out.writestr(info.filename, src.read(info.filename))
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, DIM), np.float32))
        header["shape"] = (1_600_000, DIM)
        with out.open("embeddings.npy", "w") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            zeros = bytes(1 << 20)
            for _ in range(1_600_000 * DIM * 4 // len(zeros)):
                fh.write(zeros)
    _refused(tmp_path / "bomb2.npz", reason="gallery_limit", match="ratio")
    _refused(tmp_path, reason="not_a_file")
    (tmp_path / "junk.db").write_bytes(b"not a gallery at all")
    _refused(tmp_path / "junk.db", match="neither")
    # SQLite: a template scaled by 1000, a NaN probe, a non-object config, counts that disagree
    good = tmp_path / "good.db"
    Gallery(["a", "b"], unit(rng, 2), [1, 1], CONFIG, probe()).save(good)
    cases = {"scaled.db": ("UPDATE identities SET template = ? WHERE name = 'a'",
                           ((unit(rng, 1)[0] * 1000).astype("<f4").tobytes(),), "unit norm"),
             "nanprobe.db": ("UPDATE meta SET value = ? WHERE key = 'probe'",
                             (np.full(DIM, np.nan, "<f4").tobytes(),), "probe"),
             "config.db": ("UPDATE meta SET value = ? WHERE key = 'config'", ("[1, 2]",), "JSON object"),
             "noconfig.db": ("DELETE FROM meta WHERE key = ?", ("config",), "configuration"),
             "counts.db": ("UPDATE identities SET num_images = ? WHERE name = 'a'", (5,), "weigh"),
             "dim.db": ("UPDATE identities SET template = ? WHERE name = 'a'", (b"\0" * 12,), "bytes"),
             "trigger.db": ("CREATE TRIGGER t AFTER INSERT ON photos BEGIN DELETE FROM meta; END", (), "trigger")}
    for name, (sql, params, match) in cases.items():
        p = tmp_path / name
        p.write_bytes(good.read_bytes())
        with sqlite3.connect(p) as conn:
            conn.execute(sql, params)
        _refused(p, match=match)


def test_nan_probe_never_passes_the_model_check(tmp_path):
    g = Gallery(["a"], unit(np.random.default_rng(4), 1), [1], CONFIG, probe())
    g.probe = np.full(DIM, np.nan, np.float32)  # in memory, bypassing load-time validation
    with pytest.raises(GalleryError) as err:
        g.check_compatible(StubVerifier())
    assert err.value.reason == "gallery_mismatch"
    with pytest.raises(GalleryError) as err:
        Gallery(["a"], unit(np.random.default_rng(4), 1), [1], CONFIG, probe()).check_compatible(
            StubVerifier(probe_vector=-probe()))
    assert err.value.reason == "gallery_mismatch"


def test_save_to_a_directory_is_a_typed_error(tmp_path):
    g = Gallery(["a"], unit(np.random.default_rng(5), 1), [1], CONFIG, probe())
    with pytest.raises(GalleryError) as err:
        g.save(tmp_path)
    assert err.value.reason == "not_a_file" and str(tmp_path) in str(err.value)


def test_json_depth_limit_does_not_recurse():
    with pytest.raises(GalleryError, match="nested"):
        gallery_files.loads_bounded("[" * 100_000 + "]" * 100_000, "x", "f")
