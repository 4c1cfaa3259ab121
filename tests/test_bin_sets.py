"""insightface .bin verification sets: exact round trip, restricted unpickler, structure errors,
discovery, evaluation vs an independent route, CFP / LFW folder layouts."""

import os
import pickle

import cv2
import numpy as np
import pytest

from keras_facemargin.evaluation import evaluate_pairs
from keras_facemargin.evaluation.bin_sets import (
    KNOWN_BIN_SETS,
    UnsafeBinError,
    evaluate_verification_sets,
    find_verification_sets,
    load_bin,
)
from keras_facemargin.evaluation.pairs_sets import load_cfp_folder, load_lfw_folder


def _images(n, h=20, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _write_insightface_bin(path, images_rgb, issame, ext=".png"):
    """Exactly as insightface writes a .bin: cv2-encoded bytes + python bools, highest protocol."""
    bins = [cv2.imencode(ext, cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images_rgb]
    with open(path, "wb") as f:
        pickle.dump((bins, list(issame)), f, protocol=pickle.HIGHEST_PROTOCOL)
    return bins


def test_png_round_trip_is_exact(tmp_path):
    imgs = _images(8)
    same = [True, False, True, False]
    _write_insightface_bin(tmp_path / "lfw.bin", imgs, same)
    out, issame = load_bin(tmp_path / "lfw.bin", image_size=None)
    assert out.dtype == np.uint8 and out.shape == imgs.shape
    np.testing.assert_array_equal(out, imgs)  # RGB order restored exactly
    assert issame.dtype == bool and issame.tolist() == same


def test_jpeg_decode_and_resize_match_cv2(tmp_path):
    imgs = _images(4, 40, 40, seed=1)
    bins = _write_insightface_bin(tmp_path / "x.bin", imgs, [True, False], ext=".jpg")
    out, _ = load_bin(tmp_path / "x.bin", image_size=(16, 20))
    ref = [cv2.resize(cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB),
                      (20, 16), interpolation=cv2.INTER_AREA) for b in bins]
    np.testing.assert_array_equal(out, np.stack(ref))


def test_numpy_bool_array_labels_are_admitted(tmp_path):
    imgs = _images(4)
    bins = [cv2.imencode(".png", im)[1].tobytes() for im in imgs]
    for proto in (2, 4, 5):
        with open(tmp_path / "a.bin", "wb") as f:
            pickle.dump((bins, np.array([False, True])), f, protocol=proto)
        _, same = load_bin(tmp_path / "a.bin", image_size=None)
        assert same.tolist() == [False, True]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["top", "in_bins", "in_labels"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path, where):
    marker = tmp_path / "PWNED"
    evil = _Evil(marker)
    good_bins = [cv2.imencode(".png", im)[1].tobytes() for im in _images(2)]
    payload = {"top": evil, "in_bins": ([good_bins[0], evil], [True]), "in_labels": (good_bins, [evil])}[where]
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UnsafeBinError, match=r"evil\.bin.*posix\.system|evil\.bin.*os\.system|evil\.bin.*system"):
        load_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    # sanity: the payload really is live when loaded with the unrestricted pickle
    with open(tmp_path / "evil.bin", "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("obj, msg", [
    (([b"a", b"b"],), r"\(bins, issame_list\)"),
    (([b"a", 3], [True]), r"not bytes"),
    (([b"a", b"b", b"c"], [True]), r"3 images for 1 pairs"),
    (([b"a", b"b"], [1]), r"booleans"),
    (([b"a", b"b"], np.array([1])), r"1-D bool"),
    (("ab", [True]), r"list of encoded images"),
    (([], []), r"no pairs"),
    (([b"not an image", b"x"], [True]), r"image 0 could not be decoded"),
])
def test_structure_errors_name_the_file(tmp_path, obj, msg):
    p = tmp_path / "broken.bin"
    with open(p, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ValueError, match=msg) as e:
        load_bin(p)
    assert "broken.bin" in str(e.value)


def test_not_a_pickle(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="junk.bin.*not a readable pickle"):
        load_bin(tmp_path / "junk.bin")


def test_find_and_evaluate_sets_vs_independent_route(tmp_path):
    rng = np.random.default_rng(3)
    n = 40
    base = _images(n, 12, 12, seed=4)
    a = base
    b = np.where(rng.random((n, 1, 1, 1)) < 0.5, base, _images(n, 12, 12, seed=5))  # half same image
    same = np.all(a == b, axis=(1, 2, 3))
    inter = np.empty((2 * n, 12, 12, 3), np.uint8)
    inter[0::2], inter[1::2] = a, b
    for name in ("lfw", "agedb_30"):
        _write_insightface_bin(tmp_path / f"{name}.bin", inter, same.tolist())
    _write_insightface_bin(tmp_path / "unrelated.bin", inter, same.tolist())
    found = find_verification_sets(tmp_path)
    assert list(found) == ["lfw", "agedb_30"] and all(s.kind == "bin" for s in found.values())

    def fn(x):  # deterministic "model": a fixed random projection of the pixels
        w = np.random.default_rng(0).standard_normal((12 * 12 * 3, 8)).astype(np.float32)
        return x.reshape(len(x), -1) @ w

    res = evaluate_verification_sets(fn, tmp_path, names="lfw", flip=False, image_size=12, progress=False)
    ref = evaluate_pairs(fn, a, b, same, flip=False)
    assert list(res) == ["lfw"]
    assert res["lfw"].accuracy_mean == pytest.approx(ref.accuracy_mean)
    np.testing.assert_allclose(res["lfw"].fold_accuracies, ref.fold_accuracies)
    assert res["lfw"].num_pairs == n


def test_nothing_found_lists_names(tmp_path):
    with pytest.raises(ValueError) as e:
        evaluate_verification_sets(lambda x: x.reshape(len(x), -1), tmp_path, progress=False)
    for name in KNOWN_BIN_SETS:
        assert f"{name}.bin" in str(e.value)
    with pytest.raises(ValueError, match=r"\['cfp_fp'\] not found"):
        evaluate_verification_sets(lambda x: x, tmp_path, names=["cfp_fp"], progress=False)


def _png(path, img):
    """Lossless PNG bytes whatever the extension (OpenCV decodes by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())


def test_cfp_folder_layout(tmp_path):
    imgs = _images(7, 16, 16, seed=6)
    proto = tmp_path / "Protocol"
    proto.mkdir()
    fr = [f"../Data/Images/00{i}/frontal/01.png" for i in range(1, 5)]
    pr = [f"../Data/Images/00{i}/profile/01.png" for i in range(1, 4)]
    (proto / "Pair_list_F.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(fr)))
    (proto / "Pair_list_P.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(pr)))
    for i, p in enumerate(fr):
        _png(proto / p, imgs[i])
    for i, p in enumerate(pr):
        _png(proto / p, imgs[4 + i])
    for k, (same, diff) in enumerate([("1,1\n2,2\n", "1,3\n"), ("3,3\n", "4,1\n2,1\n")]):
        d = proto / "Split" / "FP" / f"{k + 1:02d}"
        d.mkdir(parents=True)
        (d / "same.txt").write_text(same)
        (d / "diff.txt").write_text(diff)
    ps = load_cfp_folder(tmp_path, "FP", image_size=None)
    expected = [(0, 4, True, 0), (1, 5, True, 0), (0, 6, False, 0), (2, 6, True, 1), (3, 4, False, 1),
                (1, 4, False, 1)]  # (frontal idx, profile idx into imgs, same, fold)
    assert ps.num_pairs == 6
    for i, (fa, pb, s, fold) in enumerate(expected):
        np.testing.assert_array_equal(ps.images[ps.index_a[i]], imgs[fa])
        np.testing.assert_array_equal(ps.images[ps.index_b[i]], imgs[pb])
        assert ps.is_same[i] == s and ps.folds[i] == fold
    assert set(find_verification_sets(tmp_path)) == {"cfp_fp", "cfp_ff"}
    bad = proto / "Split" / "FP" / "02" / "diff.txt"
    bad.write_text("9,1\n")
    with pytest.raises(ValueError, match="diff.txt:1: index out of range"):
        load_cfp_folder(tmp_path, "FP", image_size=None)


def test_lfw_folder_layout(tmp_path):
    imgs = _images(4, 30, 30, seed=7)
    names = [("Ann", 1), ("Ann", 2), ("Bob", 1), ("Cid", 3)]
    for im, (n, i) in zip(imgs, names):
        _png(tmp_path / "images" / n / f"{n}_{i:04d}.jpg", im)  # PNG bytes; cv2 sniffs content
    (tmp_path / "pairs.txt").write_text("2\t1\nAnn\t1\t2\nBob\t1\tCid\t3\nAnn\t2\t1\nAnn\t1\tBob\t1\n")
    ps = load_lfw_folder(tmp_path, image_size=None, crop=10)
    assert ps.num_pairs == 4 and ps.images.shape == (4, 10, 10, 3)
    assert ps.is_same.tolist() == [True, False, True, False] and ps.folds.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(ps.images[ps.index_a[1]], imgs[2][10:20, 10:20])
    assert ps.index_a[0] == ps.index_b[2] and ps.index_b[0] == ps.index_a[2]  # same files -> same rows
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn\t1\nAnn\t1\tBob\t1\n")
    with pytest.raises(ValueError, match=r"pairs.txt:2: expected a matched pair"):
        load_lfw_folder(tmp_path, image_size=None)
