"""IJB-B/C: meta parsing, media/template pooling vs a pure-Python reference, chunked template
scoring vs a loop, TAR@FAR by hand, 1:N identification by hand, full synthetic layout."""

import cv2
import numpy as np
import pytest

from keras_facemargin.evaluation.ijb import (
    evaluate_ijb,
    extract_ijb_features,
    identification,
    image_to_template_features,
    load_ijb_meta,
    tar_far_table,
    verify_templates,
)


def _reference_templates(feats, templates, medias, scores=None):
    """Literal loop version of insightface image2template_feature (D1 weighting, N1)."""
    feats = [list(map(float, f)) for f in feats]
    if scores is not None:
        feats = [[v * float(s) for v in f] for f, s in zip(feats, scores)]
    out = {}
    for t in sorted(set(templates.tolist())):
        rows = [i for i in range(len(templates)) if templates[i] == t]
        total = [0.0] * len(feats[0])
        for m in sorted({int(medias[i]) for i in rows}):
            mr = [i for i in rows if medias[i] == m]
            mean = [sum(feats[i][j] for i in mr) / len(mr) for j in range(len(total))]
            total = [a + b for a, b in zip(total, mean)]
        norm = sum(v * v for v in total) ** 0.5
        out[t] = [v / norm for v in total]
    return out


def test_template_pooling_matches_reference():
    rng = np.random.default_rng(0)
    n, d = 60, 5
    feats = rng.standard_normal((n, d))
    templates = rng.choice([3, 17, 4, 99, 12], n)
    medias = rng.choice([1, 2, 3, 40], n)  # media ids shared across templates on purpose
    scores = rng.uniform(0.5, 1.0, n)
    perm = rng.permutation(n)  # order must not matter
    tf, tids = image_to_template_features(feats[perm], templates[perm], medias[perm], scores[perm])
    ref = _reference_templates(feats, templates, medias, scores)
    assert tids.tolist() == sorted(ref)
    np.testing.assert_allclose(tf, np.array([ref[t] for t in tids]), atol=1e-6)
    # media mean (not sum): a template of media 1 = {x, x} and media 2 = {y} pools to x + y
    x, y = rng.standard_normal(d), rng.standard_normal(d)
    tf2, _ = image_to_template_features(np.stack([x, x, y]), np.array([7, 7, 7]), np.array([1, 1, 2]))
    np.testing.assert_allclose(tf2[0], (x + y) / np.linalg.norm(x + y), atol=1e-6)


def test_verify_templates_chunked_equals_loop_and_unchunked():
    rng = np.random.default_rng(1)
    T, d, n = 37, 16, 1000
    F = rng.standard_normal((T, d)).astype(np.float32)
    ids = rng.permutation(np.arange(1000, 1000 + 5 * T))[:T]
    p1, p2 = ids[rng.integers(0, T, n)], ids[rng.integers(0, T, n)]
    row = {int(t): i for i, t in enumerate(ids)}
    loop = np.array([sum(float(F[row[a]][j]) * float(F[row[b]][j]) for j in range(d)) for a, b in zip(p1, p2)])
    full = verify_templates(F, ids, p1, p2, chunk=n, num_threads=1)
    np.testing.assert_allclose(full, loop, rtol=1e-5, atol=1e-5)
    for chunk, threads in ((7, 1), (7, 3), (128, 2), (None, None)):
        np.testing.assert_array_equal(verify_templates(F, ids, p1, p2, chunk=chunk, num_threads=threads), full)
    with pytest.raises(ValueError, match=r"template ids in `p2` have no template feature \(first: \[5\]\)"):
        verify_templates(F, ids, p1[:3], np.array([5, 5, ids[0]]))
    with pytest.raises(ValueError, match="unique"):
        verify_templates(F[:2], np.array([1, 1]), [1], [1])


def test_tar_far_by_hand():
    imp = np.arange(10) / 10.0  # 0.0 .. 0.9
    gen = np.array([0.95, 0.85, 0.5])
    s = np.concatenate([gen, imp])
    y = np.r_[np.ones(3, bool), np.zeros(10, bool)]
    t = tar_far_table(s, y, fars=(0.1, 0.2, 0.5, 0.05))
    # FAR 0.1: 1 impostor may pass -> threshold 0.8 -> genuine > 0.8: 0.95, 0.85
    assert t["threshold"][0.1] == pytest.approx(0.8) and t["tar"][0.1] == pytest.approx(2 / 3)
    assert t["threshold"][0.2] == pytest.approx(0.7) and t["tar"][0.2] == pytest.approx(2 / 3)
    # FAR 0.5: threshold 0.4 -> all three genuine
    assert t["tar"][0.5] == pytest.approx(1.0)
    # FAR 0.05 < 1/10: no impostor may pass -> threshold 0.9 -> only 0.95
    assert t["tar"][0.05] == pytest.approx(1 / 3)
    assert t["num_genuine"] == 3 and t["num_impostor"] == 10


def test_nearest_convention_vs_bruteforce():
    rng = np.random.default_rng(2)
    s = np.round(rng.standard_normal(300), 2)
    y = rng.random(300) < 0.3
    got = tar_far_table(s, y, fars=(1e-2, 0.05, 0.3), far_convention="nearest")["tar"]
    pts = []
    for t in np.concatenate([[np.inf], np.unique(s), [-np.inf]]):
        pts.append((np.mean(s[~y] >= t) if np.isfinite(t) else float(t < 0), np.mean(s[y] >= t) if np.isfinite(t)
                    else float(t < 0)))
    for far in (1e-2, 0.05, 0.3):
        dist = min(abs(p[0] - far) for p in pts)
        best = max(p[1] for p in pts if abs(p[0] - far) == dist)
        assert got[far] == pytest.approx(best)


def test_identification_by_hand():
    e = np.eye(4, dtype=np.float32)
    gallery = e[:3]  # subjects 10, 20, 30 -> axes 0, 1, 2
    gsub = np.array([10, 20, 30])

    def unit(v):
        v = np.asarray(v, np.float32)
        return v / np.linalg.norm(v)

    probes = np.stack([
        unit([1, 0.1, 0, 0]),      # subject 10, rank 1, mate score ~0.995
        unit([0.6, 0.8, 0, 0]),    # subject 10, rank 2 (subject 20 scores higher)
        unit([0, 0, 1, 0.2]),      # subject 30, rank 1, mate score ~0.98
        unit([0.3, 0, 0, 1]),      # subject 99 (non-mated), top score ~0.287
        unit([0, 0.9, 0, 0.436]),  # subject 98 (non-mated), top score 0.9
    ])
    psub = np.array([10, 10, 30, 99, 98])
    r = identification(probes, psub, gallery, gsub, ranks=(1, 2, 5), fpirs=(0.5, 0.1), chunk=2)
    assert r["num_mated"] == 3 and r["num_nonmated"] == 2
    assert r["mated_rank"].tolist() == [1, 2, 1]
    assert r["rank"][1] == pytest.approx(2 / 3) and r["rank"][2] == 1.0 and r["rank"][5] == 1.0
    # FPIR 0.5: one of two non-mated may pass -> threshold = 2nd largest non-mated top score (0.287)
    assert r["threshold"][0.5] == pytest.approx(0.3 / np.sqrt(1.09), rel=1e-5)
    assert r["tpir"][0.5] == pytest.approx(2 / 3)  # rank-1 mates 0.995, 0.98 pass; rank-2 probe never counts
    # FPIR 0.1: none may pass -> threshold 0.9 -> both rank-1 mates still above
    assert r["threshold"][0.1] == pytest.approx(0.9, rel=1e-3) and r["tpir"][0.1] == pytest.approx(2 / 3)


def _write_layout(root, rng, n_sub=6, d=8):
    """Synthetic IJB-C layout: templates of 6 subjects, 2 medias each, known features."""
    meta = root / "meta"
    meta.mkdir(parents=True)
    (root / "loose_crop").mkdir()
    centres = np.linalg.qr(rng.standard_normal((d, d)))[0][:n_sub]
    names, tids, mids, feats, lines = [], [], [], [], []
    tid = 100
    subj_of = {}
    for s in range(n_sub):
        for _ in range(3):  # 3 templates per subject
            tid += 1
            subj_of[tid] = s
            for m in range(2):
                for _ in range(2):
                    i = len(names)
                    names.append(f"{i}.jpg")
                    tids.append(tid)
                    mids.append(1000 * tid + m)
                    feats.append(centres[s] + 0.6 * rng.standard_normal(d))
    feats = np.array(feats, np.float32)
    order = rng.permutation(len(names))  # tid/mid file in a different order than the landmark file
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{names[i]} {tids[i]} {mids[i]}\n" for i in order))
    lm = "38 51 73 51 56 71 41 92 70 92"
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(f"{n} {lm} 0.9\n" for n in names))
    ut = sorted(subj_of)
    pairs = [(a, b, int(subj_of[a] == subj_of[b])) for i, a in enumerate(ut) for b in ut[i + 1:]]
    (meta / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {l}\n" for a, b, l in pairs))
    # 1:N: G1 = first template of subjects 0-2, G2 = of subjects 3-5, probes = the other templates
    g1 = [t for t in ut if subj_of[t] < 3 and (t - 101) % 3 == 0]
    g2 = [t for t in ut if subj_of[t] >= 3 and (t - 101) % 3 == 0]
    probes = [t for t in ut if (t - 101) % 3]
    for fname, ts in (("ijbc_1N_gallery_G1.csv", g1), ("ijbc_1N_gallery_G2.csv", g2),
                      ("ijbc_1N_probe_mixed.csv", probes)):
        rows = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
        for t in ts:
            rows += [f"{t},{subj_of[t]},img/{j}.jpg" for j in range(2)]
        (meta / fname).write_text("\n".join(rows) + "\n")
    return names, np.array(tids), np.array(mids), feats, pairs, subj_of


def test_full_synthetic_layout(tmp_path):
    rng = np.random.default_rng(5)
    names, tids, mids, feats, pairs, subj_of = _write_layout(tmp_path, rng)
    meta = load_ijb_meta(tmp_path, "IJBC")
    assert meta.names.tolist() == names
    np.testing.assert_array_equal(meta.templates, tids)  # realigned by name
    np.testing.assert_array_equal(meta.medias, mids)
    assert meta.pair_t1.size == len(pairs) and set(meta.galleries) == {"G1", "G2"}
    res = evaluate_ijb(None, tmp_path, "IJBC", features=feats, progress=False)
    ref = _reference_templates(feats, tids, mids, np.full(len(names), 0.9))
    exp_scores = np.array([np.dot(ref[a], ref[b]) for a, b, _ in pairs])
    np.testing.assert_allclose(res["scores"], exp_scores, atol=1e-5)
    labels = np.array([l for _, _, l in pairs], bool)
    for far, tar in res["verification"]["tar"].items():
        imp = np.sort(exp_scores[~labels])[::-1]
        k = int(np.floor(far * imp.size))
        thr = imp[k] if k < imp.size else -np.inf
        assert tar == pytest.approx(np.mean(exp_scores[labels] > thr))
    ident = res["identification"]
    for g, subjects in (("G1", {0, 1, 2}), ("G2", {3, 4, 5})):
        r = ident[g]
        probes = [t for t in sorted(subj_of) if (t - 101) % 3]
        assert r["num_mated"] == sum(subj_of[t] in subjects for t in probes)
        assert r["num_nonmated"] == len(probes) - r["num_mated"]
        # independent rank-1 by brute force
        gal = [t for t in sorted(subj_of) if (t - 101) % 3 == 0 and subj_of[t] in subjects]
        hits = [max(gal, key=lambda q: np.dot(ref[p], ref[q])) for p in probes if subj_of[p] in subjects]
        mated = [p for p in probes if subj_of[p] in subjects]
        assert r["rank"][1] == pytest.approx(np.mean([subj_of[h] == subj_of[p] for h, p in zip(hits, mated)]))
    assert ident["mean"]["rank"][1] == pytest.approx((ident["G1"]["rank"][1] + ident["G2"]["rank"][1]) / 2)


def test_extract_features_aligns_and_flips(tmp_path):
    rng = np.random.default_rng(6)
    _write_layout(tmp_path, rng, n_sub=1)
    meta = load_ijb_meta(tmp_path, "IJBC", with_1n=False)
    img = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)
    for n in meta.names:
        cv2.imwrite(str(tmp_path / "loose_crop" / n), img)
    fn = lambda x: x[:, :, :56].reshape(len(x), -1)[:, :32]  # noqa: E731  left-half pixels
    f, sc = extract_ijb_features(fn, tmp_path, meta, image_size=112, batch_size=5, progress=False)
    assert f.shape == (len(meta.names), 32) and np.allclose(sc, 0.9)
    f_noflip, _ = extract_ijb_features(fn, tmp_path, meta, batch_size=5, flip=False, progress=False)
    assert not np.allclose(f, f_noflip)  # the flipped view contributes
    with pytest.raises(FileNotFoundError, match="loose_crop"):
        (tmp_path / "loose_crop" / meta.names[0]).unlink()
        extract_ijb_features(fn, tmp_path, meta, progress=False)


def _brute_scores(F, ids, p1, p2):
    row = {int(t): i for i, t in enumerate(ids)}
    F64 = F.astype(np.float64)
    return np.array([F64[row[int(a)]] @ F64[row[int(b)]] for a, b in zip(p1, p2)])


@pytest.mark.parametrize("seed,T,d,n,block", [(0, 5, 3, 50, 1 << 20), (1, 60, 16, 3000, 4 * 16 * 4),
                                              (2, 200, 8, 500, 1 << 10), (3, 257, 32, 20000, 1 << 20)])
def test_verify_gemm_equals_gather_and_bruteforce(seed, T, d, n, block):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((T, d)).astype(np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(3, 3 + 7 * T))[:T]  # not sorted, gaps
    p1, p2 = ids[rng.integers(0, T, n)], ids[rng.integers(0, T, n)]
    p1[:10], p2[:10] = ids[0], ids[1]          # repeated pairs
    p1[10:15], p2[10:15] = ids[1], ids[0]      # and swapped
    p1[15:20] = p2[15:20] = ids[2]              # self pairs
    perm = rng.permutation(n)                   # random order
    p1, p2 = p1[perm], p2[perm]
    ref = _brute_scores(F, ids, p1, p2)
    g = verify_templates(F, ids, p1, p2, method="gemm", max_block_bytes=block)
    h = verify_templates(F, ids, p1, p2, method="gather", chunk=97, num_threads=2)
    assert g.dtype == h.dtype == np.float32 and g.shape == (n,)
    np.testing.assert_allclose(g, ref, atol=1e-5)
    np.testing.assert_allclose(h, ref, atol=1e-5)
    np.testing.assert_allclose(g, h, atol=1e-5)
    np.testing.assert_array_equal(verify_templates(F, ids, p1, p2, method="gather"), h)
    # huge sparse id range -> searchsorted mapping instead of a lookup table
    big = ids * 10_000_019
    np.testing.assert_array_equal(verify_templates(F, big, p1 * 10_000_019, p2 * 10_000_019, method="gemm",
                                                   max_block_bytes=block), g)


def test_verify_gemm_sparse_structure_and_float64():
    rng = np.random.default_rng(4)
    T, d = 300, 12
    F = rng.standard_normal((T, d))  # float64 stays float64
    ids = np.arange(T) * 3 + 1
    # bipartite pairs between every 5th template and a scattered subset (non-contiguous columns)
    A, B = ids[::5], ids[rng.permutation(T)[:40]]
    p1, p2 = np.repeat(A, B.size), np.tile(B, A.size)
    g = verify_templates(F, ids, p1, p2, method="gemm", max_block_bytes=1 << 9)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, _brute_scores(F, ids, p1, p2), atol=1e-12)
    np.testing.assert_allclose(verify_templates(F, ids, p2, p1, method="gather"), g, atol=1e-12)


@pytest.mark.parametrize("method", ["gemm", "gather", "auto"])
def test_verify_missing_id_and_empty(method):
    F = np.eye(3, dtype=np.float32)
    ids = np.array([30, 10, 20])
    with pytest.raises(ValueError, match=r"1 template ids in `p1` have no template feature \(first: \[777\]\)"):
        verify_templates(F, ids, [10, 777, 20], [20, 10, 30], method=method)
    with pytest.raises(ValueError, match=r"`p2` have no template feature \(first: \[-4, 99\]\)"):
        verify_templates(F, ids * 10**9, [10 * 10**9] * 3, [99, -4, 99], method=method)
    assert verify_templates(F, ids, [], [], method=method).shape == (0,)
    with pytest.raises(ValueError, match="`method`"):
        verify_templates(F, ids, [10], [20], method="fast")


def test_verify_auto_picks_gemm_when_dense_gather_when_sparse(monkeypatch):
    import keras_facemargin.evaluation.ijb.scores as ijb

    calls = []
    real_gemm, real_gather = ijb._scores_gemm, ijb._scores_gather
    monkeypatch.setattr(ijb, "_scores_gemm", lambda *a, **k: (calls.append("gemm"), real_gemm(*a, **k))[1])
    monkeypatch.setattr(ijb, "_scores_gather", lambda *a, **k: (calls.append("gather"), real_gather(*a, **k))[1])
    rng = np.random.default_rng(5)
    d = 64
    dense_T, sparse_T = 200, 5000
    F = rng.standard_normal((sparse_T, d)).astype(np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    ids = np.arange(sparse_T)
    # dense: 20,000 pairs over 200 templates (50% of all template pairs)
    p1, p2 = rng.integers(0, dense_T, 20000), rng.integers(0, dense_T, 20000)
    s = verify_templates(F, ids, p1, p2)
    assert calls == ["gemm"]
    np.testing.assert_allclose(s, verify_templates(F, ids, p1, p2, method="gather"), atol=1e-5)
    # sparse: 20,000 pairs over 5,000 templates (0.08%)
    calls.clear()
    q1, q2 = rng.integers(0, sparse_T, 20000), rng.integers(0, sparse_T, 20000)
    verify_templates(F, ids, q1, q2)
    assert calls == ["gather"]
    c = ijb.verify_cost(15_658_489, 512, 23_124 ** 2 // 2)  # IJB-C 1:1 shape
    assert c["gemm"] < c["gather"]
    c = ijb.verify_cost(15_658_489, 512, 227_630 ** 2 // 2)  # same pairs over 227k templates
    assert c["gemm"] > c["gather"]


def test_malformed_meta_files_name_file_and_line(tmp_path):
    from keras_facemargin.evaluation.ijb import (
        read_1n_csv,
        read_landmarks_scores,
        read_template_media,
        read_template_pairs,
    )

    pairs = tmp_path / "ijbc_template_pair_label.txt"
    pairs.write_text("1 2 1\n3 x 0\n5 6 1\n")
    with pytest.raises(ValueError, match=r"ijbc_template_pair_label\.txt:2: .*'3 x 0'"):
        read_template_pairs(pairs)
    media = tmp_path / "ijbc_face_tid_mid.txt"
    media.write_text("1.jpg 1 1\n2.jpg 1 one\n")
    with pytest.raises(ValueError, match=r"ijbc_face_tid_mid\.txt:2: .*integers"):
        read_template_media(media)
    lms = tmp_path / "ijbc_name_5pts_score.txt"
    lms.write_text("1.jpg " + " ".join(["1.0"] * 10) + " 0.9\n2.jpg " + " ".join(["1.0"] * 9) + " nan? 0.9\n")
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score\.txt:2: .*numbers"):
        read_landmarks_scores(lms)
    csv = tmp_path / "ijbc_1N_probe_mixed.csv"
    csv.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,7,a.jpg\n2,seven,b.jpg\n")
    with pytest.raises(ValueError, match=r"ijbc_1N_probe_mixed\.csv:3: .*integers"):
        read_1n_csv(csv)


def test_floor_far_operating_point_is_shared_and_identical():
    """verification.tar_at_far, ijb 1:N (TPIR@FPIR) and megaface_verification use one floor rule."""
    from keras_facemargin.evaluation._far import floor_far_rank, floor_threshold
    from keras_facemargin.evaluation.ijb.identification import _floor_threshold
    from keras_facemargin.evaluation.megaface import megaface_verification
    from keras_facemargin.evaluation.verification import tar_at_far

    desc = np.array([0.9, 0.8, 0.8, 0.5, 0.1])
    assert floor_far_rank(0.2, 5) == 1 and floor_far_rank(0.6, 5) == 3  # 0.6 * 5 = 2.9999...
    assert floor_threshold(desc, 0.1) == 0.9 and floor_threshold(desc, 0.4) == 0.8
    assert floor_threshold(desc, 1.0) == -np.inf and floor_threshold(desc, 1.0, below=0.0) == 0.0
    assert floor_threshold(desc[:2], 0.2, n=5) == 0.8  # only the top k + 1 are needed

    rng = np.random.default_rng(3)

    def exact_unit(n):  # four entries of +-0.5: unit norm and dot products exact in float32 (many ties)
        x = np.zeros((n, 8))
        for row in x:
            row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return x

    P, D = exact_unit(12), exact_unit(40)
    ids = np.repeat(np.arange(4), 3)
    imp = (P @ D.T).ravel()
    gen = np.concatenate([(P[ids == i] @ P[ids == i].T)[np.triu_indices(3, 1)] for i in range(4)])
    fars = (1 / 480, 0.01, 0.1, 0.5)
    mf = megaface_verification(P, ids, D, fars=fars)
    tars, thrs = tar_at_far(np.concatenate([gen, imp]), np.r_[np.ones(gen.size, bool), np.zeros(imp.size, bool)],
                            fars)
    for f in fars:
        # independent reference, by counting: the smallest impostor score t with #{impostor > t} <= f * n
        # (exact integer comparison: f * n is a whole number here or rounds away from it)
        ok = [t for t in np.unique(imp) if np.sum(imp > t) <= f * imp.size + 1e-9]
        t_ref = min(ok)
        assert np.sum(imp > t_ref) / imp.size <= f
        lower = imp[imp < t_ref]  # the next lower score would accept too many impostors
        assert lower.size == 0 or np.sum(imp > lower.max()) / imp.size > f
        tar_ref = np.sum(gen > t_ref) / gen.size
        assert _floor_threshold(imp, f) == thrs[f] == mf["threshold"][f] == t_ref
        assert tars[f] == mf["tar"][f] == pytest.approx(tar_ref, abs=1e-12)
