"""FaceVerifier: photo -> MTCNN -> ArcFace alignment -> flip-sum embedding -> cosine verdict; Gallery; CLIs.

Mechanics are tested with a tiny random Keras embedder (detection, alignment geometry, errors, JSON,
thresholds, gallery round trip). Accuracy (same person scores higher, identify picks the right person)
needs a model that discriminates faces: ``$KFM_TEST_MODEL`` (a registry name or a .keras file) or the
registry's ``DEFAULT_MODEL``; those tests skip while neither exists.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import keras

from keras_facemargin.data.align import ARCFACE_TEMPLATE_112, select_face
from keras_facemargin.evaluation.verification import embed_images
from keras_facemargin.inference.verifier import (
    ConfigurationError,
    FaceVerifier,
    GalleryError,
    ImageReadError,
    MultipleFacesError,
    NoFaceError,
    calibrate_thresholds,
    far_key,
)
from keras_facemargin.inference.gallery import Gallery
from keras_facemargin.pretrained import loader, registry
from testing import REPO, load_script

HAS_MTCNN = importlib.util.find_spec("mtcnn") is not None
needs_mtcnn = pytest.mark.skipif(not HAS_MTCNN, reason="needs the mtcnn package (pip install 'mtcnn==1.0.0')")
PEOPLE = ("George_W_Bush", "Colin_Powell", "Tony_Blair")


def tiny_embedder(seed=0, size=112, name="tiny"):
    """A random conv embedder: enough to test the mechanics, not to recognise anyone."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((size, size, 3)), keras.layers.Conv2D(8, 5, strides=4, activation="relu"),
                             keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16),
                             keras.layers.UnitNormalization()], name=name)


class NoCallDetector:
    """Fails if used: read errors must come before any detection."""

    def detect_batch(self, images):
        raise AssertionError("the detector should not run")


def write_rgb(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def lfw_images(data_dir):
    root = data_dir / "lfw" / "images"
    if not root.is_dir():
        pytest.skip(f"LFW images not found at {root}")
    return root


def lfw(root, name, i):
    return root / name / f"{name}_{i:04d}.jpg"


@pytest.fixture(scope="module")
def detector():
    if not HAS_MTCNN:
        pytest.skip("needs the mtcnn package (pip install 'mtcnn==1.0.0')")
    from keras_facemargin.data.align import MTCNNDetector

    return MTCNNDetector()


@pytest.fixture(scope="module")
def model():
    return tiny_embedder()


@pytest.fixture(scope="module")
def verifier(model, detector):
    return FaceVerifier(model, threshold=0.5, detector=detector)


@pytest.fixture(scope="module")
def real_verifier(detector):
    """A verifier with a model that really discriminates faces, or skip."""
    name = os.environ.get("KFM_TEST_MODEL") or registry.DEFAULT_MODEL
    if name is None:
        pytest.skip("no discriminative model: registry.DEFAULT_MODEL is None and $KFM_TEST_MODEL is unset "
                    "(accuracy assertions need the shipped model)")
    threshold = os.environ.get("KFM_TEST_THRESHOLD")  # needed for a .keras file (no registry thresholds)
    try:
        return FaceVerifier(name, threshold=None if threshold is None else float(threshold), detector=detector)
    except (ConfigurationError, loader.PretrainedWeightsError) as e:
        pytest.skip(f"model {name!r} unavailable: {e}")


# ------------------------------------------------------------- read errors
def test_unreadable_and_non_image_inputs_are_typed_errors_naming_the_file(tmp_path, model, data_dir):
    v = FaceVerifier(model, threshold=0.5, detector=NoCallDetector())
    good = data_dir / "lfw" / "images" / "George_W_Bush" / "George_W_Bush_0001.jpg"
    data = good.read_bytes() if good.is_file() else cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    cases = {
        "missing.jpg": (None, "not_found"),
        "folder.jpg": ("dir", "not_an_image"),
        "notes.jpg": (b"these are notes, not a photo\n", "not_an_image"),
        "empty.jpg": (b"", "unreadable"),
        "header_only.jpg": (data[:200], "unreadable"),
        "truncated.jpg": (data[: len(data) * 7 // 10], "unreadable"),
    }
    for fname, (content, reason) in cases.items():
        p = tmp_path / fname
        if content == "dir":
            p.mkdir()
        elif content is not None:
            p.write_bytes(content)
        with pytest.raises(ImageReadError) as err:
            v.verify(p, good)
        assert err.value.reason == reason, fname
        assert err.value.file == str(p) and str(p) in str(err.value)
        assert json.loads(json.dumps(err.value.to_dict()))["error"] == reason
    with pytest.raises(FileNotFoundError):  # not_found is also a FileNotFoundError
        v.embed(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="uint8"):
        v.embed(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        v.embed(np.zeros((50, 50, 2), np.uint8))
    with pytest.raises(TypeError):
        v.embed(12)


# ------------------------------------------------------- detection, alignment
@needs_mtcnn
def test_no_face_in_blank_or_noise_image(verifier, tmp_path, lfw_images):
    blank = write_rgb(tmp_path / "blank.png", np.full((250, 250, 3), 128, np.uint8))
    with pytest.raises(NoFaceError) as err:
        verifier.verify(lfw(lfw_images, "George_W_Bush", 1), blank)
    assert err.value.reason == "no_face" and err.value.file == str(blank) and err.value.exit_code == 3
    noise = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="<array>"):
        verifier.embed(noise)


@needs_mtcnn
def test_aligned_face_geometry_and_flip_sum_embedding(verifier, model, detector, lfw_images):
    path = lfw(lfw_images, "George_W_Bush", 1)
    emb, face = verifier.embed(path)
    assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
    assert face.num_faces == 1 and face.source == str(path) and face.image_shape == (250, 250)
    assert 0.9 < face.confidence <= 1.0 and face.box[2] > 50 and face.box[3] > 50
    err = np.linalg.norm(face.aligned_landmarks - ARCFACE_TEMPLATE_112, axis=1)
    assert err.max() < 5.0 and err.mean() < 3.0, err  # similarity fit of 5 real landmarks
    assert face.landmarks[0, 0] < face.landmarks[1, 0]  # image-left eye first
    # flip-sum with the package normalisation, exactly as the LFW evaluation embeds
    ref = embed_images(model, face.crop[None], flip=True)[0]
    np.testing.assert_allclose(emb, ref, atol=1e-6)
    # same photo as a path and as an RGB array: same face, same embedding
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    emb2, face2 = verifier.embed(rgb)
    np.testing.assert_allclose(emb2, emb, atol=1e-6)
    assert face2.source == "<array>"
    # another input size: aligned at 112, resized; landmarks near the scaled template
    v96 = FaceVerifier(tiny_embedder(size=96), threshold=0.5, detector=detector)
    _, f96 = v96.embed(rgb)
    assert f96.crop.shape == (96, 96, 3)
    np.testing.assert_allclose(f96.aligned_landmarks, face.aligned_landmarks * 96 / 112, atol=1e-6)
    d = face.to_dict(include_crop=True)
    json.dumps(d)
    png = np.frombuffer(__import__("base64").b64decode(d["crop_png_base64"]), np.uint8)
    assert np.array_equal(cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), face.crop)


@needs_mtcnn
def test_verify_decision_threshold_and_json(model, detector, lfw_images):
    a = lfw(lfw_images, "George_W_Bush", 1)
    rgb = cv2.cvtColor(cv2.imread(str(a)), cv2.COLOR_BGR2RGB)
    r = FaceVerifier(model, threshold=0.5, detector=detector).verify(a, rgb)
    assert r.score == pytest.approx(1.0, abs=1e-6) and r.is_same
    assert r.threshold == 0.5 and r.far is None and r.threshold_source == "explicit" and r.model == "tiny"
    d = json.loads(json.dumps(r.to_dict()))
    assert d["status"] == "ok" and d["same"] is True and len(d["faces"]) == 2
    assert "crop_png_base64" not in d["faces"][0]
    b = lfw(lfw_images, "Colin_Powell", 1)
    r2 = FaceVerifier(model, threshold=1.0, detector=detector).verify(a, b)
    assert -1.0 <= r2.score < 1.0 and r2.is_same is False  # same iff score > threshold


@needs_mtcnn
def test_several_faces_policies(model, detector, lfw_images):
    big = cv2.cvtColor(cv2.imread(str(lfw(lfw_images, "George_W_Bush", 1))), cv2.COLOR_BGR2RGB)
    small = cv2.resize(cv2.cvtColor(cv2.imread(str(lfw(lfw_images, "Colin_Powell", 1))), cv2.COLOR_BGR2RGB),
                       (125, 125), interpolation=cv2.INTER_AREA)
    tile = np.concatenate([big, np.pad(small, ((0, 125), (0, 0), (0, 0)))], axis=1)  # 250 x 375
    faces = {p: FaceVerifier(model, threshold=0.5, detector=detector, face_policy=p).faces([tile])[0]
             for p in ("largest", "best", "central")}
    dets = detector.detect(tile)
    assert len(dets) >= 2 and faces["largest"].num_faces == len(dets)
    areas = [d["box"][2] * d["box"][3] for d in dets]
    assert faces["largest"].index == int(np.argmax(areas)) and faces["largest"].box[0] < 250  # the big photo
    assert faces["best"].index == int(np.argmax([d["confidence"] for d in dets]))
    assert faces["central"].index == select_face(dets, tile.shape)  # the LFW alignment's rule
    with pytest.raises(MultipleFacesError) as err:
        FaceVerifier(model, threshold=0.5, detector=detector, face_policy="error").verify(tile, big)
    assert err.value.reason == "multiple_faces" and err.value.file == "<array>"
    info = err.value.to_dict()
    assert info["num_faces"] == len(dets) and len(info["faces"]) == len(dets) and err.value.exit_code == 4
    json.dumps(info)
    with pytest.raises(ConfigurationError, match="face_policy"):
        FaceVerifier(model, threshold=0.5, face_policy="first")


# --------------------------------------------------- model, threshold, registry
@pytest.fixture
def fake_registry(monkeypatch, model):
    entry = dict(registry.MODELS["arcface_r50"], normalization={"mean": 127.5, "std": 127.5},
                 thresholds={"0.01": 0.2, "0.001": 0.35, "accuracy": 0.3})
    monkeypatch.setitem(registry.MODELS, "fake_small", entry)
    monkeypatch.setitem(registry.MODELS, "fake_far_only", dict(entry, thresholds={"0.01": 0.2}))
    monkeypatch.setitem(registry.MODELS, "fake_uncalibrated", dict(registry.MODELS["arcface_r50"]))
    monkeypatch.setattr(loader, "load", lambda name, include_head=False, weights=None: model)
    return entry


def test_threshold_and_normalization_from_the_registry(fake_registry, monkeypatch, model):
    v = FaceVerifier("fake_small")  # the default operating point: best balanced accuracy
    assert (v.threshold, v.threshold_far, v.threshold_source) == (0.3, None, "registry:fake_small:accuracy")
    assert v.face_policy == "central" and v.crop["kind"] == "arcface"
    assert v.normalization == {"mean": 127.5, "std": 127.5} and v.image_size == (112, 112)
    v = FaceVerifier("fake_small", far=1e-3)
    assert (v.threshold, v.threshold_far, v.threshold_source) == (0.35, 1e-3, "registry:fake_small:far=0.001")
    assert FaceVerifier("fake_small", far=1e-2).threshold == 0.2
    with pytest.raises(ConfigurationError, match="no 'accuracy' operating point.*'0.01'"):
        FaceVerifier("fake_far_only")
    assert FaceVerifier("fake_small", threshold=0.1).threshold_source == "explicit"
    assert FaceVerifier("fake_small", normalization={"mean": 0, "std": 255}).normalization == {"mean": 0.0, "std": 255.0}
    with pytest.raises(ConfigurationError, match=r"far=0.0001.*'0.001'") as err:
        FaceVerifier("fake_small", far=1e-4)
    assert err.value.reason == "no_threshold"
    with pytest.raises(ConfigurationError, match="calibrate_verifier") as err:
        FaceVerifier("fake_uncalibrated")
    assert err.value.reason == "no_threshold"
    with pytest.raises(ConfigurationError, match="calibrate_verifier"):
        FaceVerifier(model)  # a bare Keras model carries no calibrated threshold
    v = FaceVerifier(model, threshold=0.4)
    assert v.normalization == {"mean": 127.5, "std": 128.0}  # the package default
    monkeypatch.setattr(registry, "DEFAULT_MODEL", None)
    with pytest.raises(ConfigurationError, match="DEFAULT_MODEL") as err:
        FaceVerifier()
    assert err.value.reason == "no_model"
    monkeypatch.setattr(registry, "DEFAULT_MODEL", "fake_small")
    assert FaceVerifier().model_name == "fake_small"
    for bad in (0.0, 2.0, "x"):
        with pytest.raises(ConfigurationError, match="far"):
            FaceVerifier(model, far=bad)
    with pytest.raises(ConfigurationError, match="threshold"):
        FaceVerifier(model, threshold=1.5)
    with pytest.raises(ConfigurationError, match="not a registry name"):
        FaceVerifier("no_such_model")
    assert far_key(1e-3) == "0.001" and far_key(0.01) == "0.01"


# ------------------------------------------------------------------ gallery
def link(dst, src):
    """A folder: a symbolic link; a photo: a copy (folder jobs refuse links out of their folder, issue 23)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if Path(src).is_dir():
        os.symlink(src, dst)
    else:
        shutil.copyfile(src, dst)


@needs_mtcnn
def test_gallery_build_save_load_identify(verifier, detector, model, lfw_images, tmp_path):
    root = tmp_path / "people"
    for name in PEOPLE:
        for i in (1, 2):
            link(root / name / f"{i}.jpg", lfw(lfw_images, name, i))
    (root / "README.txt").write_text("stray file")
    (root / "Tony_Blair" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "Nobody").mkdir()
    write_rgb(root / "Nobody" / "blank.png", np.full((120, 120, 3), 200, np.uint8))
    g = Gallery.build(verifier, root)
    assert g.identities == sorted(PEOPLE) and g.counts.tolist() == [2, 2, 2]
    reasons = {Path(s["path"]).name: s["reason"] for s in g.skipped}
    assert reasons == {"README.txt": "not_in_identity_folder", "broken.jpg": "unreadable", "blank.png": "no_face",
                       "Nobody": "no_usable_image"}
    np.testing.assert_allclose(np.linalg.norm(g.embeddings, axis=1), 1.0, atol=1e-6)
    # template = re-normalised mean of the images' embeddings
    e = np.stack([verifier.embed(root / "Colin_Powell" / f"{i}.jpg")[0] for i in (1, 2)]).mean(0)
    np.testing.assert_allclose(g.embeddings[g.identities.index("Colin_Powell")], e / np.linalg.norm(e), atol=1e-5)

    path = g.save(tmp_path / "gallery.db")
    g2 = Gallery.load(path, verifier)
    assert g2.identities == g.identities and np.array_equal(g2.embeddings, g.embeddings)
    assert np.array_equal(g2.counts, g.counts) and g2.config == g.config and g2.skipped == g.skipped
    query = lfw(lfw_images, "Tony_Blair", 3)
    r1, r2 = verifier.identify(query, g, top_k=10), verifier.identify(query, g2, top_k=10)
    assert r1.candidates == r2.candidates and len(r1.candidates) == 3
    scores = [c["score"] for c in r1.candidates]
    assert scores == sorted(scores, reverse=True)
    assert r1.identity == (r1.candidates[0]["identity"] if scores[0] > 0.5 else "unknown")
    assert verifier.identify(query, g2, threshold=-1.0).identity == r1.candidates[0]["identity"]
    unknown = verifier.identify(query, g2, top_k=1, threshold=1.0)
    assert unknown.identity == "unknown" and not unknown.is_known and len(unknown.candidates) == 1
    json.dumps(r1.to_dict())

    with pytest.raises(GalleryError, match="other weights") as err:  # same shapes, other weights
        FaceVerifier(tiny_embedder(seed=1), threshold=0.5, detector=detector).identify(query, g2)
    assert err.value.reason == "gallery_mismatch" and str(path) in str(err.value)
    with pytest.raises(GalleryError, match="normalization"):
        Gallery.load(path, FaceVerifier(model, threshold=0.5, normalization={"mean": 127.5, "std": 127.5}))
    with pytest.raises(GalleryError, match="embedding_dim"):
        Gallery.load(path, FaceVerifier(keras.Sequential([keras.Input((112, 112, 3)), keras.layers.Flatten(),
                                                          keras.layers.Dense(8), keras.layers.UnitNormalization()]),
                                        threshold=0.5))


def test_gallery_file_safety(tmp_path, model):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    objects = tmp_path / "objects.npz"
    np.savez(objects, embeddings=np.zeros((1, 2)), counts=np.ones(1), identities=np.array(["a"]),
             probe=np.zeros(2), metadata=np.array([{"format": "keras_facemargin.gallery"}], dtype=object))
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    for p, match in ((other, "missing"), (objects, "allow_pickle|Object arrays"), (text, "not a readable")):
        with pytest.raises(GalleryError, match=match) as err:
            Gallery.load(p)
        assert err.value.reason == "gallery_format" and str(p) in str(err.value)
    with pytest.raises(FileNotFoundError):
        Gallery.load(tmp_path / "missing.npz")
    v = FaceVerifier(model, threshold=0.5, detector=NoCallDetector())
    g = Gallery(["a", "b"], np.eye(2, 16), [1, 1], v.config(), v.probe_embedding())
    g2 = Gallery.load(g.save(tmp_path / "sub" / "g.gallery"), v)  # any suffix; exact path kept
    assert g2.identities == ["a", "b"] and np.array_equal(g2.embeddings, g.embeddings)


# -------------------------------------------------------------- calibration
@needs_mtcnn
def test_calibrate_thresholds_on_a_small_pairs_file(model, detector, lfw_images, tmp_path):
    root = tmp_path / "lfw"
    link(root / "images", lfw_images)
    (root / "pairs.txt").write_text(
        "2 2\nGeorge_W_Bush 1 2\nColin_Powell 1 2\nGeorge_W_Bush 3 Tony_Blair 1\nColin_Powell 3 Tony_Blair 2\n"
        "Tony_Blair 1 3\nGeorge_W_Bush 4 5\nColin_Powell 4 Tony_Blair 4\nGeorge_W_Bush 1 Colin_Powell 5\n")
    kw = dict(cache_dir=tmp_path / "cache", progress=False, detector=detector)
    cal = calibrate_thresholds(model, root, fars=(0.5, 0.25), **kw)
    assert set(cal["thresholds"]) == {"0.5", "0.25"} and cal["num_pairs"] == 8 and cal["num_impostor"] == 4
    assert cal["rule"] == "same iff cosine > threshold" and cal["normalization"] == {"mean": 127.5, "std": 128.0}
    json.dumps(cal)
    # Independent reference: the cached MTCNN crops (the data), then NumPy and the bare Keras model only --
    # (x - 127.5) / 128, f(x) + f(flip x), cosine per pair as written above -- and a brute-force threshold
    # search: the smallest candidate t with #{impostor > t} <= far * #impostor, TAR and FAR by counting.
    from keras_facemargin.data.lfw import load_lfw_images

    lines = [ln.split() for ln in (root / "pairs.txt").read_text().splitlines()[1:]]
    sides = [((t[0], t[1]), (t[0], t[2])) if len(t) == 3 else ((t[0], t[1]), (t[2], t[3])) for t in lines]
    same = np.array([len(t) == 3 for t in lines])
    files = sorted({p for pair in sides for p in pair})
    paths = [root / "images" / n / f"{n}_{int(i):04d}.jpg" for n, i in files]
    crops = load_lfw_images(paths, 112, align="mtcnn", **kw).astype(np.float64)
    x = ((crops - 127.5) / 128.0).astype("float32")
    emb = model.predict(x, verbose=0) + model.predict(np.ascontiguousarray(x[:, :, ::-1]), verbose=0)
    emb = dict(zip(files, emb.astype(np.float64)))
    scores = np.array([emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b in sides])
    genuine, impostor = scores[same], scores[~same]
    for f in (0.5, 0.25):
        t_ref = min(t for t in np.concatenate([[-np.inf], impostor]) if np.sum(impostor > t) <= f * impostor.size)
        t = cal["thresholds"][far_key(f)]
        assert t == pytest.approx(t_ref, abs=1e-5)
        assert cal["tar"][far_key(f)] == np.sum(genuine > t_ref) / genuine.size
        assert cal["far"][far_key(f)] == np.sum(impostor > t_ref) / impostor.size <= f
    # a FaceVerifier gives the same numbers (its model, normalisation, size)
    v = FaceVerifier(model, threshold=cal["thresholds"]["0.5"], detector=detector)
    assert calibrate_thresholds(v, root, fars=(0.5, 0.25), **kw)["thresholds"] == cal["thresholds"]


# ----------------------------------------------------------------- accuracy
@pytest.mark.slow
@needs_mtcnn
def test_real_model_same_person_scores_higher(real_verifier, lfw_images):
    same = real_verifier.verify(lfw(lfw_images, "George_W_Bush", 1), lfw(lfw_images, "George_W_Bush", 2))
    diff = real_verifier.verify(lfw(lfw_images, "George_W_Bush", 1), lfw(lfw_images, "Colin_Powell", 1))
    assert same.score > diff.score


@pytest.mark.slow
@needs_mtcnn
def test_real_model_identifies_lfw_people(real_verifier, lfw_images, tmp_path):
    root = tmp_path / "people"
    for name in PEOPLE:
        for i in (1, 2, 3):
            link(root / name / f"{i}.jpg", lfw(lfw_images, name, i))
    g = Gallery.load(Gallery.build(real_verifier, root).save(tmp_path / "g.npz"), real_verifier)
    for name in PEOPLE:
        r = real_verifier.identify(lfw(lfw_images, name, 5), g)
        assert r.candidates[0]["identity"] == name, r.candidates


# --------------------------------------------------------------------- CLIs
def run_tool(tool, *args):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"stdout is not JSON:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}") from None
    return proc.returncode, out


def load_tool(name):
    sys.path.insert(0, str(REPO / "tools"))
    return load_script(f"tools/{name}.py")


@pytest.mark.slow
@needs_mtcnn
def test_cli_verify_faces(lfw_images, model, tmp_path, capsys):
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    a, b = lfw(lfw_images, "George_W_Bush", 1), lfw(lfw_images, "George_W_Bush", 2)
    rc, out = run_tool("verify_faces.py", a, b, "--model", model_path, "--threshold", "0.5")
    assert rc == 0 and out["status"] == "ok" and isinstance(out["same"], bool) and out["threshold"] == 0.5
    assert -1 <= out["score"] <= 1 and [f["source"] for f in out["faces"]] == [str(a), str(b)]
    assert out["same"] == (out["score"] > 0.5)
    # error outcomes, in-process (same main(), no second TensorFlow start-up)
    main = load_tool("verify_faces").main
    blank = write_rgb(tmp_path / "blank.png", np.full((200, 200, 3), 90, np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(a.read_bytes()[:500])
    for args, code, error, file in (([blank, a], 3, "no_face", blank), ([a, corrupt], 5, "unreadable", corrupt),
                                    ([a, tmp_path], 5, "not_an_image", tmp_path),
                                    ([a, b], 2, "no_threshold", None)):
        extra = ["--threshold", "0.5"] if code != 2 else []
        rc = main([*map(str, args), "--model", str(model_path), *extra])
        err = json.loads(capsys.readouterr().out)
        assert (rc, err["status"], err["error"], err["file"]) == (code, "error", error, file and str(file)), err


@pytest.mark.slow
@needs_mtcnn
def test_cli_identify(lfw_images, model, tmp_path, capsys):
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    root = tmp_path / "people"
    for name in PEOPLE[:2]:
        link(root / name / "1.jpg", lfw(lfw_images, name, 1))
    saved = tmp_path / "people.npz"
    query = lfw(lfw_images, "Colin_Powell", 2)
    common = ["--model", model_path, "--threshold", "0.5"]
    rc, out = run_tool("identify.py", "--gallery", root, "--save-gallery", saved, query, *common, "--no-progress")
    assert rc == 0 and out["status"] == "ok" and saved.is_file()
    assert out["gallery"]["built"] and out["gallery"]["identities"] == 2 and out["gallery"]["saved_to"] == str(saved)
    assert {c["identity"] for c in out["candidates"]} == set(PEOPLE[:2])
    assert out["identity"] in (*PEOPLE[:2], "unknown") and out["face"]["source"] == str(query)
    main = load_tool("identify").main
    rc = main(["--gallery", str(saved), str(query), *map(str, common)])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and not again["gallery"]["built"] and again["candidates"] == out["candidates"]
    other = tmp_path / "other.keras"
    tiny_embedder(seed=3).save(other)
    rc = main(["--gallery", str(saved), str(query), "--model", str(other), "--threshold", "0.5"])
    err = json.loads(capsys.readouterr().out)
    assert rc == 6 and err["error"] == "gallery_mismatch"
