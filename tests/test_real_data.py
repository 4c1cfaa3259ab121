"""Real-data loaders: LFW pairs/images/verification and identity folders (CelebA aligned 10k).

Tests taking ``data_dir`` skip when the shared data is absent; parser/error tests run everywhere.
"""

import importlib.util
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_facemargin.data.align import ARCFACE_TEMPLATE_112, select_face
from keras_facemargin.data.identity_folders import (
    CELEBA_ARCFACE_CROP_BOX,
    load_identity_folder,
)
from keras_facemargin.data.lfw import (
    LFW_CENTER_CROP_BOX,
    load_lfw_images,
    load_lfw_pairs,
)
from keras_facemargin.evaluation import evaluate_pairs, lfw_verification

HAS_MTCNN = importlib.util.find_spec("mtcnn") is not None


def pixel_model(x):
    """Cheap deterministic 'embedding': a subsample of the normalised pixels."""
    return x[:, ::4, ::4, :].reshape(x.shape[0], -1)


# ------------------------------------------------------------------ LFW
def test_lfw_pairs_structure(lfw_root):
    pairs = load_lfw_pairs(lfw_root)
    a, b, same = pairs
    assert len(pairs) == len(a) == len(b) == 6000
    assert same.dtype == bool and same.sum() == 3000
    assert pairs.num_folds == 10 and pairs.pairs_per_fold == 300
    for k in range(10):
        blk = slice(600 * k, 600 * k + 600)
        assert same[blk][:300].all() and not same[blk][300:].any()
        assert (pairs.fold[blk] == k).all()
    # independent parse of the raw lines
    lines = [ln.split() for ln in (lfw_root / "pairs.txt").read_text().splitlines() if ln.strip()]
    assert lines[0] == ["10", "300"]
    rng = np.random.default_rng(0)
    for i in rng.choice(6000, 50, replace=False):
        f = lines[1 + i]
        if len(f) == 3:
            exp = (f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{f[0]}/{f[0]}_{int(f[2]):04d}.jpg", True)
        else:
            exp = (f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{f[2]}/{f[2]}_{int(f[3]):04d}.jpg", False)
        assert a[i].endswith("images/" + exp[0]) and b[i].endswith("images/" + exp[1]) and same[i] == exp[2]
    # every referenced file exists
    assert all(Path(p).is_file() for p in set(a) | set(b))
    # folds agree with the fold/identity list (identities are disjoint across folds; 1-based there)
    fid = {}
    for ln in (lfw_root / "pairs_fold_identities.txt").read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            k, name = ln.split("\t")
            fid[name] = int(k) - 1
    for pa, pb, k in zip(a, b, pairs.fold):
        assert fid[Path(pa).parent.name] == k and fid[Path(pb).parent.name] == k
    paths, ia, ib = pairs.unique_paths()
    assert len(paths) == len(set(a) | set(b))
    assert (paths[ia] == a).all() and (paths[ib] == b).all()


def test_parse_pairs_records_agree_with_evaluation_parser(lfw_root):
    from keras_facemargin.data.lfw import parse_pairs

    recs = parse_pairs(lfw_root / "pairs.txt")
    assert len(recs) == 6000 and recs[0][:6] == ("Abel_Pacheco", 1, "Abel_Pacheco", 4, True, 0)
    assert recs[0].line == 2 and recs[300][:6] == ("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1, False, 0)
    # an independent reading of the file: 10 folds of 600 lines (300 "name i j", 300 "n1 i n2 j")
    lines = [ln.split() for ln in (lfw_root / "pairs.txt").read_text().splitlines()[1:] if ln.strip()]
    ref = [(t[0], int(t[1]), t[0], int(t[2]), True, k // 600) if len(t) == 3
           else (t[0], int(t[1]), t[2], int(t[3]), False, k // 600) for k, t in enumerate(lines)]
    assert [tuple(r[:6]) for r in recs] == ref
    assert [r.line for r in recs] == list(range(2, 6002))


def _write_pairs(root, lines, images=()):
    root.mkdir(parents=True, exist_ok=True)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    for rel in images:
        p = root / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.zeros((250, 250, 3), np.uint8))
    (root / "images").mkdir(exist_ok=True)


def test_lfw_pairs_parser_small_and_errors(tmp_path):
    imgs = ["A/A_0001.jpg", "A/A_0002.jpg", "B/B_0001.jpg"]
    good = ["2 1", "A 1 2", "A 1 B 1", "A 2 1", "A 2 B 1"]
    _write_pairs(tmp_path / "ok", good, imgs)
    p = load_lfw_pairs(tmp_path / "ok")
    assert p.is_same.tolist() == [True, False, True, False] and p.fold.tolist() == [0, 0, 1, 1]
    assert p.paths_b[1].endswith("images/B/B_0001.jpg")

    cases = [
        (["x y"], r"pairs.txt:1: header"),
        (["2 1", "A 1 2", "A 1 B 1"], r"implies 4 pair lines, found 2"),
        (["2 1", "A 1 B 1", "A 1 B 1", "A 2 1", "A 2 B 1"], r"pairs.txt:2: expected a matched pair"),
        (["2 1", "A 1 2", "A 1 2", "A 2 1", "A 2 B 1"], r"pairs.txt:3: expected a mismatched pair"),
        (["2 1", "A 1 x", "A 1 B 1", "A 2 1", "A 2 B 1"], r"pairs.txt:2: image number 'x'"),
        (["2 1", "A 1 2", "A 1 B 1", "A 2 1", "A 2 B 0"], r"pairs.txt:5: image number 0"),
    ]
    for i, (lines, match) in enumerate(cases):
        _write_pairs(tmp_path / f"bad{i}", lines, imgs)
        with pytest.raises(ValueError, match=match):
            load_lfw_pairs(tmp_path / f"bad{i}")
    _write_pairs(tmp_path / "missing", ["1 1", "A 1 3", "A 1 B 1"], imgs)
    with pytest.raises(FileNotFoundError, match=r"A_0003.jpg \(line 2\)"):
        load_lfw_pairs(tmp_path / "missing")
    assert len(load_lfw_pairs(tmp_path / "missing", check_exists=False)) == 2
    with pytest.raises(FileNotFoundError, match="pairs.txt"):
        load_lfw_pairs(tmp_path / "nowhere")


def test_lfw_center_crop_matches_manual_reference(lfw_root):
    pairs = load_lfw_pairs(lfw_root)
    paths = pairs.paths_a[:5]
    imgs = load_lfw_images(paths, image_size=112, progress=False)
    assert imgs.shape == (5, 112, 112, 3) and imgs.dtype == np.uint8
    x0, y0, x1, y1 = LFW_CENTER_CROP_BOX
    for p, got in zip(paths, imgs):
        bgr = cv2.imread(str(p))
        assert bgr.shape == (250, 250, 3)
        ref = cv2.resize(bgr[y0:y1, x0:x1], (112, 112), interpolation=cv2.INTER_AREA)[:, :, ::-1]
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="align"):
        load_lfw_images(paths, align="dlib")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_lfw_images([str(lfw_root / "nope.jpg")], progress=False)


def test_lfw_mtcnn_alignment_and_cache(lfw_root, tmp_path):
    if not HAS_MTCNN:
        pytest.skip("mtcnn not installed (pip install 'mtcnn==1.0.0')")
    from keras_facemargin.data.align import MTCNNDetector

    paths = load_lfw_pairs(lfw_root).paths_a[:16:2]
    det = MTCNNDetector()
    imgs, info = load_lfw_images(paths, 112, align="mtcnn", cache_dir=tmp_path, detector=det,
                                 progress=False, return_info=True)
    assert imgs.shape == (8, 112, 112, 3) and not info["from_cache"] and info["no_face"] == []
    assert Path(info["cache_file"]).is_file() and Path(info["cache_file"]).parent == tmp_path
    again, info2 = load_lfw_images(paths, 112, align="mtcnn", cache_dir=tmp_path, progress=False,
                                   return_info=True)
    assert info2["from_cache"] and info2["cache_file"] == info["cache_file"]
    np.testing.assert_array_equal(again, imgs)
    # different settings -> different cache entry
    other = load_lfw_images(paths, 96, align="mtcnn", cache_dir=tmp_path, detector=det, progress=False)
    assert other.shape == (8, 96, 96, 3) and len(list(tmp_path.glob("*.npz"))) == 2
    # the aligned crops put detected landmarks on the template (independent re-detection)
    err = []
    for im in imgs:
        d = det.detect(im)
        k = select_face(d, im.shape)
        err.append(np.linalg.norm(d[k]["landmarks"] - ARCFACE_TEMPLATE_112, axis=1).mean())
    assert np.mean(err) < 4.0, err


def test_default_crops_have_arcface_geometry(data_dir, lfw_root):
    """LFW centre crop and CelebA crop both put MTCNN landmarks near the ArcFace template."""
    if not HAS_MTCNN:
        pytest.skip("mtcnn not installed (pip install 'mtcnn==1.0.0')")
    from keras_facemargin.data.align import MTCNNDetector

    det = MTCNNDetector()
    lfw = load_lfw_images(load_lfw_pairs(lfw_root).paths_a[::400], 112, progress=False)  # 15 images
    celeba = load_identity_folder(data_dir / "celeba_align_10k" / "images", 112, max_identities=15).images
    for name, imgs in (("lfw", lfw), ("celeba", celeba)):
        lms = []
        for im, d in zip(imgs, det.detect_batch(list(imgs))):
            if d:
                lms.append(d[select_face(d, im.shape)]["landmarks"])
        assert len(lms) >= 0.8 * len(imgs), name
        mean_err = np.linalg.norm(np.mean(lms, 0) - ARCFACE_TEMPLATE_112, axis=1)
        assert mean_err.max() < 6.0, (name, mean_err)


@pytest.mark.slow
def test_lfw_verification_matches_evaluate_pairs(lfw_root, tmp_path):
    pairs = load_lfw_pairs(lfw_root)
    res = lfw_verification(pixel_model, lfw_root, image_size=56, progress=False, far_targets=(1e-2,),
                           cache=True, cache_dir=tmp_path)
    assert res.num_pairs == 6000 and res.fold_accuracies.shape == (10,)
    assert 0.55 < res.accuracy_mean < 0.9  # raw pixels: better than chance, far from a face model
    paths, ia, ib = pairs.unique_paths()
    imgs, info = load_lfw_images(paths, 56, progress=False, cache=True, cache_dir=tmp_path, return_info=True)
    assert info["from_cache"]  # same images as lfw_verification used (centre crop is tested above)
    ref = evaluate_pairs(pixel_model, imgs[ia], imgs[ib], pairs.is_same, far_targets=(1e-2,))
    np.testing.assert_allclose(res.fold_accuracies, ref.fold_accuracies)
    assert res.accuracy_mean == ref.accuracy_mean and res.tar_at_far == ref.tar_at_far
    with pytest.raises(ValueError, match="folds"):
        lfw_verification(pixel_model, lfw_root, folds=5)


# ------------------------------------------------------------ identity folder
@pytest.fixture(scope="module")
def celeba_root(data_dir):
    root = data_dir / "celeba_align_10k"
    if not (root / "images").is_dir():
        pytest.skip(f"CelebA 10k not found at {root}")
    return root


def test_celeba_counts_match_official_identity_file(celeba_root):
    official = {}
    with open(celeba_root / "identity_CelebA.txt") as fh:
        for ln in fh:
            f = ln.split()
            if len(f) == 2 and f[0].endswith(".jpg") and 1 <= int(f[0][:-4]) <= 10000:
                official[f[0]] = f[1]
    assert len(official) == 10000
    expected = Counter(official.values())

    data = load_identity_folder(celeba_root / "images", image_size=32)
    x, y, names, counts = data
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int32 and y.min() == 0 and y.max() == len(names) - 1 == 5428
    assert np.all(np.diff(y) >= 0)  # identity-major, deterministic order
    assert dict(zip(names, counts.tolist())) == dict(expected)
    assert np.bincount(y).tolist() == counts.tolist()
    assert data.unreadable == [] and data.ignored == [] and data.dropped_identities == {}
    # every row's label names the identity the official file gives its image
    for rel, lab in zip(data.paths, y):
        assert official[Path(rel).name] == names[lab]
    assert names == sorted(names)  # string order, as data.folders.scan_image_folder
    from keras_facemargin.data.formats.folders import scan_image_folder

    ref_paths, ref_labels, ref_names = scan_image_folder(celeba_root / "images")
    assert ref_names == names and ref_labels.tolist() == y.tolist()
    assert [Path(p).relative_to(celeba_root / "images").as_posix() for p in ref_paths] == data.paths

    three = load_identity_folder(celeba_root / "images", image_size=16, min_images=3)
    assert three.num_classes == sum(c >= 3 for c in expected.values()) == 1171
    assert len(three.dropped_identities) == 5429 - 1171
    assert three.class_counts.sum() == sum(c for c in expected.values() if c >= 3)


def test_celeba_crop_policies(celeba_root):
    root = celeba_root / "images"
    rel = load_identity_folder(root, 8, max_identities=2).paths
    bgr = cv2.imread(str(root / rel[0]))
    assert bgr.shape == (109, 89, 3)
    rgb = bgr[:, :, ::-1]
    x0, y0, x1, y1 = CELEBA_ARCFACE_CROP_BOX
    cases = {
        "auto": cv2.resize(rgb[y0:y1, x0:x1], (112, 112), interpolation=cv2.INTER_LINEAR),
        "center_square": cv2.resize(rgb[10:99, 0:89], (64, 64), interpolation=cv2.INTER_AREA),
        "none": cv2.resize(rgb, (89, 109), interpolation=cv2.INTER_LINEAR),
    }
    sizes = {"auto": 112, "center_square": 64, "none": (109, 89)}
    for crop, ref in cases.items():
        d = load_identity_folder(root, sizes[crop], crop=crop, max_identities=2)
        np.testing.assert_array_equal(d.images[0], ref)
    with pytest.raises(ValueError, match="crop"):
        load_identity_folder(root, 32, crop="tight")
    with pytest.raises(ValueError, match="does not fit"):
        load_identity_folder(root, 32, crop=(0, 0, 200, 200), max_identities=1)


def test_identity_folder_unreadable_and_ignored(tmp_path):
    for ident, n in (("10", 2), ("2", 1), ("alice", 3)):
        (tmp_path / ident).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / ident / f"{i:02d}.jpg"), np.full((40, 40, 3), 10 * i, np.uint8))
    (tmp_path / "alice" / "99.jpg").write_bytes(b"garbage")
    (tmp_path / "alice" / "notes.txt").write_text("x")
    (tmp_path / "stray.jpg").write_bytes(b"")
    (tmp_path / "alice" / "nested").mkdir()
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(ValueError, match=r"alice/99.jpg"):
        load_identity_folder(tmp_path, 16)
    d = load_identity_folder(tmp_path, 16, on_error="skip", min_images=2)
    assert d.class_names == ["10", "alice"] and d.class_counts.tolist() == [2, 3]
    assert d.dropped_identities == {"2": 1}
    assert [u[0] for u in d.unreadable] == ["alice/99.jpg"]
    assert d.ignored == [".hidden/", "alice/nested/", "alice/notes.txt", "stray.jpg"]
    assert d.paths == ["10/00.jpg", "10/01.jpg", "alice/00.jpg", "alice/01.jpg", "alice/02.jpg"]
    assert d.labels.tolist() == [0, 0, 1, 1, 1] and d.images.shape == (5, 16, 16, 3)
    with pytest.raises(ValueError, match=">= 9"):
        load_identity_folder(tmp_path, 16, on_error="skip", min_images=9)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_identity_folder(tmp_path / "nope")
