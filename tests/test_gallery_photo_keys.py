"""Gallery photo keys come from the bytes the photo decoder read: one read per photo, keyed by its content.

The reference is independent of the package: ``"sha256:" + hashlib.sha256(file bytes).hexdigest()``
of the file as written by the test, and a count of ``os.open`` calls on each photo's path (the
package's bounded reader, ``utils.folder_files.read_regular_file``, is the only opener of photos).
A tiny random Keras embedder and a detector returning fixed landmarks stand in for real models.
"""

import hashlib
import os

import cv2
import numpy as np
import pytest

import keras

from keras_facemargin.inference.gallery import Gallery, add_embeddings, add_photos, photo_key
from keras_facemargin.inference.gallery_store import GalleryStore
from keras_facemargin.inference.verifier import FaceVerifier


class FixedDetector:
    """One face per image, at fixed landmarks inside a 120x120 photo."""

    def detect_batch(self, images):
        lm = np.array([[45, 50], [75, 50], [60, 65], [48, 82], [72, 82]], float)
        return [[{"box": (20.0, 20.0, 80.0, 80.0), "confidence": 1.0, "landmarks": lm}] for _ in images]


@pytest.fixture(scope="module")
def verifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((112, 112, 3)), keras.layers.Conv2D(4, 5, strides=4),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(8),
                              keras.layers.UnitNormalization()], name="tiny")
    return FaceVerifier(model, threshold=0.5, detector=FixedDetector())


def _photo(path, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _sha_key(path):
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def opens(monkeypatch):
    """``{realpath: number of os.open calls}`` from here on."""
    counts, real_open = {}, os.open

    def counting_open(path, *args, **kwargs):
        key = os.path.realpath(os.fspath(path))
        counts[key] = counts.get(key, 0) + 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    return counts


def test_add_photos_keys_are_the_file_sha256_and_each_photo_is_opened_once(tmp_path, verifier, opens):
    photos = [_photo(tmp_path / "in" / f"a{i}.png", i) for i in range(3)]
    report = add_photos(tmp_path / "g.db", verifier, "alice", [str(p) for p in photos])
    assert report["added"] == 3 and report["failed"] == []
    assert [opens.get(os.path.realpath(p), 0) for p in photos] == [1, 1, 1]
    keys = {r["key"] for r in GalleryStore(tmp_path / "g.db").photos("alice")}
    assert keys == {_sha_key(p) for p in photos}
    assert keys == {photo_key(p) for p in photos}  # the public path-only key: same format


def test_gallery_build_keys_are_the_file_sha256_and_each_photo_is_opened_once(tmp_path, verifier, opens):
    photos = [_photo(tmp_path / "people" / name / f"{name}{i}.png", 10 * k + i)
              for k, name in enumerate(("alice", "bob")) for i in range(2)]
    g = Gallery.build(verifier, tmp_path / "people")
    assert [opens.get(os.path.realpath(p), 0) for p in photos] == [1, 1, 1, 1]
    assert {row[0] for rows in g.photos.values() for row in rows} == {_sha_key(p) for p in photos}
    g.save(tmp_path / "g.db")
    assert {r["key"] for r in GalleryStore(tmp_path / "g.db").photos()} == {_sha_key(p) for p in photos}


def test_add_embeddings_keys_the_bytes_embedded_even_if_the_file_changed(tmp_path, verifier):
    p = _photo(tmp_path / "a.png", 1)
    embedded = _sha_key(p)
    emb, face = verifier.embed(str(p))
    assert face.file_sha256 == embedded[len("sha256:"):]
    _photo(p, 2)  # replaced after it was decoded and embedded
    assert _sha_key(p) != embedded
    add_embeddings(tmp_path / "g.db", verifier, "alice", [(str(p), emb, face)])
    assert [r["key"] for r in GalleryStore(tmp_path / "g.db").photos("alice")] == [embedded]
    add_embeddings(tmp_path / "g.db", verifier, "bob", [(str(p), emb)])  # no face: the file is read for its key
    assert [r["key"] for r in GalleryStore(tmp_path / "g.db").photos("bob")] == [_sha_key(p)]


def test_array_photos_keep_their_array_key(tmp_path, verifier):
    rgb = np.random.default_rng(3).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    report = add_photos(tmp_path / "g.db", verifier, "carol", [rgb])
    assert report["added"] == 1
    reference = hashlib.sha256(repr(((120, 120, 3), "uint8")).encode() + rgb.tobytes()).hexdigest()
    assert [r["key"] for r in GalleryStore(tmp_path / "g.db").photos("carol")] == ["sha256:" + reference]
