"""MegaFace Challenge 1: .bin feature format, noise lists, CMC and TAR@FAR vs brute force / by hand."""

import struct

import numpy as np
import pytest

from keras_facemargin.evaluation.megaface import (
    apply_facescrub_noises,
    apply_megaface_noises,
    evaluate_megaface,
    load_features,
    megaface_identification,
    megaface_verification,
    read_feature_bin,
    read_noise_list,
    write_feature_bin,
)


def _insightface_write_bin(path, feature):
    """insightface gen_megaface.py write_bin, verbatim format."""
    feature = list(feature)
    with open(path, "wb") as f:
        f.write(struct.pack("4i", len(feature), 1, 4, 5))
        f.write(struct.pack("%df" % len(feature), *feature))


def test_bin_feature_format(tmp_path):
    v = np.random.default_rng(0).standard_normal(7).astype(np.float32)
    _insightface_write_bin(tmp_path / "a.bin", v)
    np.testing.assert_array_equal(read_feature_bin(tmp_path / "a.bin"), v)
    write_feature_bin(tmp_path / "b.bin", v)
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()
    (tmp_path / "sub").mkdir()
    _insightface_write_bin(tmp_path / "sub" / "x.png_insightface.bin", v)
    np.testing.assert_array_equal(load_features(tmp_path, ["b.bin"], suffix=""), v[None])
    np.testing.assert_array_equal(load_features(tmp_path, ["sub/x.png"]), v[None])
    (tmp_path / "bad.bin").write_bytes(struct.pack("4i", 7, 1, 8, 6) + b"\x00" * 28)
    with pytest.raises(ValueError, match="bad.bin: unexpected MegaFace header"):
        read_feature_bin(tmp_path / "bad.bin")
    (tmp_path / "short.bin").write_bytes(struct.pack("4i", 7, 1, 4, 5) + b"\x00" * 20)
    with pytest.raises(ValueError, match="short.bin: 36 bytes, expected 44"):
        read_feature_bin(tmp_path / "short.bin")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(P, ids, D, ranks, far):
    P, D = _unit(P.astype(np.float64)), _unit(D.astype(np.float64))
    cmc = {r: 0 for r in ranks}
    total = 0
    gen = []
    for i in range(len(P)):
        sd = D @ P[i]
        for j in range(len(P)):
            if i != j and ids[i] == ids[j]:
                g = float(P[i] @ P[j])
                rank = 1 + int(np.sum(sd >= g))
                total += 1
                for r in ranks:
                    cmc[r] += rank <= r
                if i < j:
                    gen.append(g)
    imp = np.sort((P @ D.T).ravel())[::-1]
    k = int(np.floor(far * imp.size))
    tar = np.mean(np.array(gen) > imp[k])
    return {r: c / total for r, c in cmc.items()}, tar


def test_identification_and_verification_vs_bruteforce():
    rng = np.random.default_rng(1)
    ids = np.repeat([0, 1, 2, 3], [3, 4, 2, 5])
    centres = rng.standard_normal((4, 12))
    P = (centres[ids] + 0.9 * rng.standard_normal((ids.size, 12))).astype(np.float32)
    D = rng.standard_normal((203, 12)).astype(np.float32)
    ranks = (1, 2, 3, 5, 10)
    far = 1e-2  # 14 * 203 impostors -> 28 may pass
    exp_cmc, exp_tar = _brute(P, ids, D, ranks, far)
    for pc, dc in ((3, 17), (100, 1000), (1, 1)):
        got = megaface_identification(P, ids, D, ranks=ranks, probe_chunk=pc, distractor_chunk=dc)
        assert got["num_pairs"] == 3 * 2 + 4 * 3 + 2 * 1 + 5 * 4
        for r in ranks:
            assert got[r] == pytest.approx(exp_cmc[r])
        ver = megaface_verification(P, ids, D, fars=(far,), probe_chunk=pc, distractor_chunk=dc)
        assert ver["tar"][far] == pytest.approx(exp_tar)
        assert ver["num_genuine"] == 3 + 6 + 1 + 10 and ver["num_impostor"] == ids.size * 203
    assert 0 < exp_cmc[1] < exp_cmc[10] < 1  # the example is not degenerate


def test_known_answer_by_hand():
    # identity A: a1=(1,0), a2=(0.8,0.6) -> s(a1,a2)=0.8; one distractor at (0.6,0.8)
    P = np.array([[1, 0], [0.8, 0.6]], np.float32)
    D = np.array([[0.6, 0.8], [-1, 0]], np.float32)
    ids = np.array([0, 0])
    # probe a1: distractor scores 0.6, -1 < 0.8 -> rank 1; probe a2: 0.96 >= 0.8 -> rank 2
    got = megaface_identification(P, ids, D, ranks=(1, 2))
    assert got[1] == 0.5 and got[2] == 1.0
    # impostors: 0.6, -1, 0.96, -0.8; FAR 0.25 -> 1 may pass -> threshold 0.6 -> genuine 0.8 accepted
    ver = megaface_verification(P, ids, D, fars=(0.25, 0.1))
    assert ver["threshold"][0.25] == pytest.approx(0.6) and ver["tar"][0.25] == 1.0
    assert ver["threshold"][0.1] == pytest.approx(0.96) and ver["tar"][0.1] == 0.0


def test_noise_lists(tmp_path):
    (tmp_path / "fs.txt").write_text("# comment\nA_2.png\nB_1.png\nB_2.png\nZ_9.png\n")
    (tmp_path / "mf.txt").write_text("0\t11/a@N00/1_1.jpg\n11/b@N00/2_1.jpg\n# x\n")
    fsn = read_noise_list(tmp_path / "fs.txt")
    mfn = read_noise_list(tmp_path / "mf.txt", "megaface")
    assert fsn == {"A_2.png", "B_1.png", "B_2.png", "Z_9.png"}
    assert mfn == {"11/a@N00/1_1.jpg", "11/b@N00/2_1.jpg"}
    f = np.array([[1, 0], [0, 1], [3, 4], [9, 9], [5, 5]], np.float32)
    ids = np.array(["A", "A", "A", "B", "B"])
    names = ["A/A_1.png", "A/A_2.png", "A/A_3.png", "B/B_1.png", "B/B_2.png"]
    out, oid, onames, rep = apply_facescrub_noises(f, ids, names, fsn, mode="replace")
    centre = np.array([1 + 3, 0 + 4], np.float32)  # sum of A's clean features
    np.testing.assert_allclose(out[1], centre / np.linalg.norm(centre))
    np.testing.assert_array_equal(out[[0, 2]], f[[0, 2]])
    assert oid.tolist() == ["A", "A", "A"]  # identity B (all noisy) removed
    assert rep == {"noisy": 3, "replaced": 1, "removed": 2, "unmatched_noise_entries": 1}
    out, oid, _, rep = apply_facescrub_noises(f, ids, names, fsn, mode="remove")
    assert oid.tolist() == ["A", "A"] and rep["removed"] == 3
    D = np.arange(8, dtype=np.float32).reshape(4, 2)
    dn = ["/x/11/a@N00/1_1.jpg", "11/a@N00/1_2.jpg", "/m/11/b@N00/2_1.jpg", "12/c/3.jpg"]
    dk, dnk, rep = apply_megaface_noises(D, dn, mfn)
    np.testing.assert_array_equal(dk, D[[1, 3]])
    assert rep == {"removed": 2, "unmatched_noise_entries": 0}


def test_evaluate_megaface_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.repeat([0, 1, 2], 4)
    P = (rng.standard_normal((3, 8))[ids] + 0.5 * rng.standard_normal((12, 8))).astype(np.float32)
    D = rng.standard_normal((500, 8)).astype(np.float32)
    pn = [f"{i}/{i}_{j}.png" for i, j in zip(ids, np.tile(range(4), 3))]
    dn = [f"a/b{k}/{k}.jpg" for k in range(500)]
    np.save(tmp_path / "d.npy", D)
    r = evaluate_megaface(P, ids, load_features(tmp_path / "d.npy"), pn, dn, facescrub_noises={"0_1.png"},
                          megaface_noises={f"a/b{k}/{k}.jpg" for k in range(100)}, num_distractors=300,
                          ranks=(1, 5), fars=(1e-3,), distractor_chunk=64)
    assert r.num_distractors == 300 and r.num_probes == 12 and r.num_impostor == 3600
    assert r.noise_report["megaface"]["removed"] == 100 and r.noise_report["facescrub"]["replaced"] == 1
    P2, _, _, _ = apply_facescrub_noises(P, ids, pn, {"0_1.png"})
    exp_cmc, exp_tar = _brute(P2, ids, D[100:400], (1, 5), 1e-3)
    assert r.cmc[1] == pytest.approx(exp_cmc[1]) and r.cmc[5] == pytest.approx(exp_cmc[5])
    assert r.tar_at_far[1e-3] == pytest.approx(exp_tar)
    assert "rank-1" in r.format()
