"""The `kfm` command (keras_facemargin.cli): help, exit codes, verify / identify / gallery / embed on
LFW photos with the default model, export by zoo name, and flags generated from TrainConfig.

Most tests call ``keras_facemargin.cli.main([...])`` in-process (one TensorFlow start-up); one test
runs ``python -m keras_facemargin`` as a user does.
"""

import dataclasses
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

import keras_facemargin as kfm
from keras_facemargin.cli import main
from testing import REPO

SUBCOMMANDS = [["verify"], ["identify"], ["embed"], ["gallery"], ["gallery", "add"], ["gallery", "remove"],
               ["gallery", "list"], ["gallery", "import"], ["models"], ["calibrate"], ["export"], ["convert"], ["align"], ["evaluate"],
               ["evaluate", "verification"], ["evaluate", "ijb"], ["evaluate", "megaface"], ["train"], ["data"],
               ["data", "folder2rec"], ["data", "rec2tfrecord"], ["package"], ["demo"]]


def run_kfm(capsys, *args):
    """``(exit status, stdout JSON lines, stderr)`` of ``kfm ARGS --json``, in-process."""
    code = main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")], err


def lfw(lfw_root, name, i):
    return lfw_root / "images" / name / f"{name}_{i:04d}.jpg"


def test_help_of_every_subcommand(capsys, monkeypatch):
    """`python -m keras_facemargin --help` (run as __main__) and every subcommand's --help exit 0."""
    monkeypatch.setattr(sys, "argv", ["kfm", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("keras_facemargin", run_name="__main__")
    assert exc.value.code == 0
    top = capsys.readouterr().out
    for command in {c[0] for c in SUBCOMMANDS}:
        assert f"\n    {command}" in top, command
    assert "exit status: 0 " in top
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert exc.value.code == 0, command
        assert out.startswith(f"usage: kfm {' '.join(command)}"), (command, out[:200])


@pytest.mark.slow
def test_python_m_bad_model_is_exit_2_without_traceback(tmp_path):
    """As a user runs it: a user error ends in a one-line message and exit status 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "keras_facemargin", "verify", "a.jpg", "b.jpg", "--model",
                           "no_such_model"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "kfm: error: Unknown model 'no_such_model'" in proc.stderr
    assert proc.stdout == ""


def test_usage_errors_and_exported_models_are_exit_2(capsys, tmp_path):
    code, out, err = run_kfm(capsys, "verify", "a.jpg", "b.jpg", "--model", "no_such_model")
    assert code == 2 and out[0]["status"] == "error" and "no_such_model" in out[0]["message"]
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    code, out, _ = run_kfm(capsys, "verify", "a.jpg", "b.jpg", "--model", tmp_path / "m.tflite")
    # An exported model runs only with the metadata its export wrote (preprocessing, crop geometry).
    assert code == 2 and out[0]["error"] == "metadata_missing" and "m.tflite.json" in out[0]["file"]
    code, out, _ = run_kfm(capsys, "embed", "a.jpg", "--output", tmp_path / "e.txt")
    assert code == 2 and ".npz" in out[0]["message"]
    with pytest.raises(SystemExit) as exc:  # argparse: a missing argument
        main(["verify", "only_one.jpg"])
    assert exc.value.code == 2


def test_models_lists_the_zoo(capsys):
    from keras_facemargin.pretrained.registry import DEFAULT_MODEL

    code, rows, _ = run_kfm(capsys, "models")
    assert code == 0 and [r["name"] for r in rows] == kfm.list_models()
    assert [r["name"] for r in rows if r["default"]] == [DEFAULT_MODEL]
    for r in rows:
        info = kfm.model_info(r["name"])
        assert r["input_size"] == list(info["input_size"]) and r["embedding_dim"] == info["embedding_dim"]
        assert r["ready"] == ("weights" in r) and (r["ready"] or r["needs"])
        assert bool(r["calibrated_fars"]) == bool(info.get("thresholds"))
    shipped = kfm.pretrained.loader.packaged_weights_path("mbf_dlib_distill")
    assert shipped.is_file() and next(r for r in rows if r["name"] == "mbf_dlib_distill")["ready"]
    code, (entry,), _ = run_kfm(capsys, "models", "mbf_dlib_distill")
    assert code == 0 and entry["thresholds"] == kfm.model_info("mbf_dlib_distill")["thresholds"]
    code, (err,), _ = run_kfm(capsys, "models", "nope")
    assert code == 2 and "Known models" in err["message"]


def test_verify_lfw_photos_with_the_default_model(lfw_root, capsys):
    """Two photos of one person: same; two people: not. The threshold is the registry's accuracy point."""
    from keras_facemargin.pretrained.registry import DEFAULT_MODEL

    expected_threshold = kfm.model_info(DEFAULT_MODEL)["thresholds"]["accuracy"]
    bush1, bush2 = lfw(lfw_root, "George_W_Bush", 1), lfw(lfw_root, "George_W_Bush", 2)
    powell = lfw(lfw_root, "Colin_Powell", 1)
    code, (same,), _ = run_kfm(capsys, "verify", bush1, bush2)
    assert code == 0 and same["is_same"] is True and same["model"] == DEFAULT_MODEL
    code, (diff,), _ = run_kfm(capsys, "verify", bush1, powell)
    assert code == 0 and diff["is_same"] is False
    for r in (same, diff):
        assert r["threshold"] == expected_threshold and r["is_same"] == (r["score"] > r["threshold"])
    assert [f["source"] for f in diff["faces"]] == [str(bush1), str(powell)]
    assert main(["verify", str(bush1), str(bush2)]) == 0  # the human-readable form
    assert capsys.readouterr().out.startswith("same person: score ")


def test_verify_exit_codes_for_missing_unreadable_and_faceless_photos(lfw_root, tmp_path, capsys):
    import cv2

    photo = lfw(lfw_root, "George_W_Bush", 1)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photo.read_bytes()[:400])
    for other, code_expected, reason in ((tmp_path / "missing.jpg", 5, "not_found"), (corrupt, 5, "unreadable"),
                                         (blank, 3, "no_face")):
        code, (err,), stderr = run_kfm(capsys, "verify", photo, other)
        assert (code, err["error"], err["file"]) == (code_expected, reason, str(other)), err
        assert "Traceback" not in stderr
    assert main(["verify", str(photo), str(tmp_path / "missing.jpg")]) == 5
    assert "kfm: error: " in capsys.readouterr().err


def test_embed_writes_unit_rows_and_lists_failures(lfw_root, tmp_path, capsys):
    photos = [lfw(lfw_root, "George_W_Bush", i) for i in (1, 2)]
    out = tmp_path / "emb.npz"
    code, lines, _ = run_kfm(capsys, "embed", *photos, tmp_path / "missing.jpg", "--output", out, "--no-progress")
    assert code == 0 and lines[-1] == {"status": "ok", "output": str(out), "embedded": 2, "failed": 1}
    assert [x.get("error") for x in lines[:-1]] == [None, None, "not_found"]
    with np.load(out, allow_pickle=False) as z:
        emb, paths = z["embeddings"], z["paths"].tolist()
        assert z["failed_paths"].tolist() == [str(tmp_path / "missing.jpg")]
        assert json.loads(str(z["metadata"]))["model"]["embedding_dim"] == emb.shape[1] == 128
    assert paths == [str(p) for p in photos] and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # a folder is searched recursively for images; hidden files and other files are left out
    folder = tmp_path / "people"
    (folder / "powell" / "more").mkdir(parents=True)
    for i, dest in ((1, "powell/a.jpg"), (2, "powell/more/b.jpg"), (3, "powell/.hidden.jpg")):
        (folder / dest).write_bytes(lfw(lfw_root, "Colin_Powell", i).read_bytes())
    (folder / "powell" / "notes.txt").write_text("not a photo")
    code, lines, _ = run_kfm(capsys, "embed", folder, "--output", tmp_path / "powell.npz", "--no-progress")
    with np.load(tmp_path / "powell.npz", allow_pickle=False) as z:
        powell = z["embeddings"]
        assert z["paths"].tolist() == [str(folder / "powell/a.jpg"), str(folder / "powell/more/b.jpg")]
    assert code == 0 and lines[-1]["embedded"] == 2
    # the same person's photos are closer to each other than to another person's
    assert float(emb[0] @ emb[1]) > float(np.max(powell @ emb.T))
    assert float(powell[0] @ powell[1]) > float(np.max(powell @ emb.T))


def test_gallery_add_list_identify_remove(lfw_root, tmp_path, capsys):
    g = tmp_path / "people.db"
    bush = [lfw(lfw_root, "George_W_Bush", i) for i in (1, 2)]
    powell = lfw(lfw_root, "Colin_Powell", 1)
    code, (added,), _ = run_kfm(capsys, "gallery", "add", g, "bush", *bush)
    assert code == 0 and added["added"] == 2 and added["identities"] == 1
    code, (failed, added), _ = run_kfm(capsys, "gallery", "add", g, "powell", powell, tmp_path / "missing.jpg")
    assert code == 0 and (added["added"], added["failed"], added["identities"]) == (1, 1, 2)
    assert failed["error"] == "not_found"  # reported, and left out
    code, (listing,), _ = run_kfm(capsys, "gallery", "list", g)
    assert code == 0 and listing["identities"] == [{"identity": "bush", "num_images": 2},
                                                   {"identity": "powell", "num_images": 1}]
    # the templates are the normalised means of the photos' embeddings (`kfm embed`, independently)
    run_kfm(capsys, "embed", *bush, powell, "--output", tmp_path / "e.npz", "--no-progress")
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        e = z["embeddings"].astype(np.float64)
    mean = e[0] + e[1]
    from keras_facemargin.inference.gallery import Gallery

    np.testing.assert_allclose(Gallery.load(g).embeddings, np.stack([mean / np.linalg.norm(mean), e[2]]), atol=1e-5)
    queries = [lfw(lfw_root, "George_W_Bush", 3), lfw(lfw_root, "Colin_Powell", 2), lfw(lfw_root, "AJ_Cook", 1)]
    code, answers, _ = run_kfm(capsys, "identify", g, *queries, "--no-progress")
    assert code == 0 and [a["identity"] for a in answers] == ["bush", "powell", "unknown"]
    assert all({c["identity"] for c in a["candidates"]} == {"bush", "powell"} for a in answers)
    assert answers[2]["candidates"][0]["score"] <= answers[2]["threshold"]
    code, (removed,), _ = run_kfm(capsys, "gallery", "remove", g, "bush")
    assert code == 0 and removed["identities"] == 1
    code, (err,), _ = run_kfm(capsys, "gallery", "remove", g, "bush")
    assert code == 6 and err["error"] == "unknown_identity"
    code, (listing,), _ = run_kfm(capsys, "gallery", "list", g)
    assert [r["identity"] for r in listing["identities"]] == ["powell"]
    code, (err,), _ = run_kfm(capsys, "gallery", "add", g, "x", powell, "--model", "mbf_dlib_distill")
    assert code == 6 and err["error"] == "gallery_mismatch"  # another model's gallery is refused


def test_train_flags_are_generated_from_the_config(capsys, tmp_path):
    from keras_facemargin.cli import build_parser, train
    from keras_facemargin.training.config import TrainConfig, get_experiment

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        flag = "--keras-verbose" if field.name == "verbose" else "--" + field.name.replace("_", "-")
        assert flag in text, flag
    names = tmp_path / "exclude.txt"
    names.write_text("alice\nbob\n")
    args = build_parser("train").parse_args(
        ["train", "--data", "a", "--data", "b", "--batch-size", "32", "--lr-steps", "2,3", "--no-plots",
         "--backbone-kwargs", '{"stage_blocks": [1, 1, 1, 1]}', "--mixed-precision", "--keras-verbose", "0",
         "--exclude-identities", str(names), "--loss", "arcface", "--scale", "30"])
    expected = get_experiment("ms1mv2", data=("a", "b"), batch_size=32, lr_steps=(2, 3), plots=False,
                              backbone_kwargs={"stage_blocks": [1, 1, 1, 1]}, mixed_precision=True, verbose=0,
                              exclude_identities=("alice", "bob"), loss="arcface", scale=30.0)
    assert train.config_from_args(args) == expected
    assert train.config_from_args(build_parser("train").parse_args(["train"])) == get_experiment("synthetic")
    code, (err,), _ = run_kfm(capsys, "train", "--resume", tmp_path, "--epochs", "3")
    assert code == 2 and "--epochs" in err["message"]
    code, (err,), _ = run_kfm(capsys, "train", "--batch-size", "0")
    assert code == 2 and "batch_size" in err["message"]


@pytest.mark.slow
def test_export_zoo_model_by_name_to_tflite(tmp_path, capsys):
    """`kfm export NAME --format tflite`: the file runs and agrees with the Keras model."""
    from keras_facemargin.export import TFLiteEmbedder

    out = tmp_path / "mbf.tflite"
    code, (result,), _ = run_kfm(capsys, "export", "mbf_dlib_distill", "--format", "tflite", "--output", out,
                                 "--no-check")
    assert code == 0 and result["output"] == str(out) and out.stat().st_size > 100_000
    keras_model = kfm.load("mbf_dlib_distill")
    assert keras_model.normalization == {"mean": 127.5, "std": 128.0}  # exported as it is
    images = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3)).astype(np.float32)
    x = (images - 127.5) / 128.0
    ref = np.asarray(keras_model.predict(x, verbose=0), np.float64)
    got = np.asarray(TFLiteEmbedder(out)(x), np.float64)
    cos = np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.9999
