"""FaceVerifier.embed_many and FaceVerifier.detect_all on real LFW photos (keras_facemargin.inference.batch).

References are independent of the batch code: ``FaceVerifier.embed`` one photo at a time, the typed
errors ``FaceVerifier.faces`` raises for one photo, a gallery built from other photos of the same people.
The mechanics use the shipped zoo model ``mbf_dlib_distill`` (small, fast on CPU); gallery matches need a
model that tells these people apart: ``$KFM_TEST_MODEL`` or the registry's ``DEFAULT_MODEL`` (skip without it).
"""

import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

from keras_facemargin.errors import ConfigurationError, ImageReadError, PretrainedWeightsError, MultipleFacesError, NoFaceError
from keras_facemargin.inference.gallery import Gallery
from keras_facemargin.inference.results import AllFacesResult, DetectedFace, EmbedManyResult
from keras_facemargin.inference.verifier import FaceVerifier
from testing import row_cosine

pytestmark = [pytest.mark.real_data,
              pytest.mark.skipif(importlib.util.find_spec("mtcnn") is None, reason="needs the mtcnn package")]
MODEL = "mbf_dlib_distill"


@pytest.fixture(scope="module")
def images(lfw_root):
    root = lfw_root / "images"
    if not root.is_dir():
        pytest.skip(f"LFW images not found at {root}")
    return root


def lfw(root, name, i):
    return root / name / f"{name}_{i:04d}.jpg"


@pytest.fixture(scope="module")
def verifier():
    from keras_facemargin.pretrained import loader

    if not loader.packaged_weights_path(MODEL).is_file():
        pytest.skip(f"the weights of {MODEL} are not shipped in this checkout")
    return FaceVerifier(MODEL)


@pytest.fixture(scope="module")
def real_verifier(verifier):
    """A verifier with a model that discriminates faces (the default model), sharing the detector, or skip."""
    from keras_facemargin.pretrained import registry

    name = os.environ.get("KFM_TEST_MODEL") or registry.DEFAULT_MODEL
    if name is None:
        pytest.skip("no discriminative model: registry.DEFAULT_MODEL is None and $KFM_TEST_MODEL is unset")
    threshold = os.environ.get("KFM_TEST_THRESHOLD")
    try:
        return FaceVerifier(name, threshold=None if threshold is None else float(threshold),
                            detector=verifier.detector)
    except (ConfigurationError, PretrainedWeightsError) as e:
        pytest.skip(f"model {name!r} unavailable: {e}")


def rgb_of(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def two_face_photo(images, tmp_path):
    """Bush (left) and Powell (right), side by side: one 250 x 500 photo with two faces."""
    tile = np.concatenate([rgb_of(lfw(images, "George_W_Bush", 1)), rgb_of(lfw(images, "Colin_Powell", 1))],
                          axis=1)
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
    return path


def test_embed_many_equals_embed_and_reports_failures(verifier, images, tmp_path):
    good = [lfw(images, "George_W_Bush", 2), lfw(images, "Colin_Powell", 2), lfw(images, "Tony_Blair", 1),
            lfw(images, "Serena_Williams", 1)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((250, 250, 3), 128, np.uint8))
    missing = tmp_path / "missing.jpg"
    photos = [good[0], broken, good[1], blank, good[2], missing, good[3]]
    exact = verifier.embed_many(photos, batch_size=3, progress=False, batch_detection=False)
    result = verifier.embed_many(photos, batch_size=3, progress=False)  # chunks cut across the failures
    assert isinstance(result, EmbedManyResult) and len(result) == len(photos)
    assert [it.source for it in result] == [str(p) for p in photos]
    assert [it.ok for it in result] == [True, False, True, False, True, False, True]
    errors = {it.source: it.error for it in result if not it.ok}
    assert isinstance(errors[str(broken)], ImageReadError) and errors[str(broken)].reason in ("unreadable",
                                                                                               "not_an_image")
    assert isinstance(errors[str(blank)], NoFaceError) and errors[str(blank)].reason == "no_face"
    assert isinstance(errors[str(missing)], ImageReadError) and errors[str(missing)].reason == "not_found"
    for p in (broken, blank, missing):  # the same typed errors as one photo at a time
        with pytest.raises(type(errors[str(p)])) as one:
            verifier.embed(p)
        assert one.value.reason == errors[str(p)].reason
    reference = np.stack([verifier.embed(p)[0] for p in good])
    assert result.embeddings.shape == (4, verifier.embedding_dim) and result.sources == [str(p) for p in good]
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)
    assert np.all(row_cosine(exact.embeddings, reference) > 0.9999)  # one photo per detector call, as embed()
    assert [it.ok for it in exact] == [it.ok for it in result]
    # batched detection: MTCNN's whole-pixel rounding of batch-shape float noise may move a landmark by 1 px
    assert np.all(row_cosine(result.embeddings, reference) > 0.99)
    assert [it.face.num_faces for it in result if it.ok] == [it.face.num_faces for it in exact if it.ok]
    d = json.loads(json.dumps(result.to_dict()))
    assert (d["photos"], d["embedded"], d["failed"]) == (7, 4, 3)
    assert d["results"][3] == errors[str(blank)].to_dict() and d["results"][0]["face"]["num_faces"] == 1


def test_embed_many_multiple_faces_error_per_photo(images, tmp_path):
    from keras_facemargin.pretrained import loader

    if not loader.packaged_weights_path(MODEL).is_file():
        pytest.skip(f"the weights of {MODEL} are not shipped in this checkout")
    strict = FaceVerifier(MODEL, face_policy="error")
    one = lfw(images, "Tony_Blair", 2)
    result = strict.embed_many([two_face_photo(images, tmp_path), one, np.zeros((4, 4), np.float32)],
                               progress=False)
    assert isinstance(result[0].error, MultipleFacesError) and result[0].error.extra["num_faces"] >= 2
    assert result[1].ok and row_cosine(result[1].embedding[None], strict.embed(one)[0][None])[0] > 0.9999
    assert isinstance(result[2].error, ImageReadError) and result[2].error.file == "<array>"  # float array


def test_detect_all_every_face_with_gallery_matches(real_verifier, images, tmp_path):
    verifier = real_verifier
    people = tmp_path / "people"
    for name in ("George_W_Bush", "Colin_Powell", "Tony_Blair"):
        (people / name).mkdir(parents=True)
        for i in (2, 3):
            (people / name / f"{i}.jpg").write_bytes(lfw(images, name, i).read_bytes())
    gallery = Gallery.build(verifier, people)
    photo = two_face_photo(images, tmp_path)
    plain = verifier.detect_all(photo)
    assert isinstance(plain, AllFacesResult) and len(plain) >= 2 and plain.image_shape == (250, 500)
    for face in plain:
        assert isinstance(face, DetectedFace) and face.identity is None and face.landmarks.shape == (5, 2)
        x, y, w, h = face.box
        assert np.all((face.landmarks[:, 0] >= x) & (face.landmarks[:, 0] <= x + w)), (face.box, face.landmarks)
        assert np.all((face.landmarks[:, 1] >= y) & (face.landmarks[:, 1] <= y + h)), (face.box, face.landmarks)
        assert 0.0 < face.confidence <= 1.0 and abs(np.linalg.norm(face.embedding) - 1.0) < 1e-6
    matched = verifier.detect_all(photo, gallery=gallery)
    main = sorted((f for f in matched if f.box[2] * f.box[3] > 40 * 40), key=lambda f: f.box[0])
    assert [f.identity for f in main] == ["George_W_Bush", "Colin_Powell"], [f.to_dict() for f in matched]
    assert all(f.is_known and f.score > verifier.threshold and f.score == f.candidates[0]["score"] for f in main)
    assert matched.threshold == verifier.threshold
    d = json.loads(json.dumps(matched.to_dict()))
    assert len(d["faces"]) == len(matched) and {"box", "landmarks", "confidence", "identity", "score"} <= set(
        d["faces"][0])
    # a one-face photo: its face is the one embed() uses, with the same embedding
    single = lfw(images, "Tony_Blair", 1)
    faces = verifier.detect_all(single, gallery=gallery)
    emb, face = verifier.embed(single)
    k = [f.index for f in faces].index(face.index)
    assert row_cosine(faces[k].embedding[None], emb[None])[0] > 0.9999 and faces[k].identity == "Tony_Blair"
    assert len(verifier.detect_all(np.full((200, 200, 3), 128, np.uint8), gallery=gallery)) == 0
