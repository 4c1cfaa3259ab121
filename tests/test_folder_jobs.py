"""Folder jobs continue past bad files (issue 23, part 3), each case in a limited subprocess.

One hostile tree holds, next to valid photos named with bytes that are not UTF-8, a newline and 250
bytes: a truncated JPEG, random bytes named ``.jpg``, a 4 GiB sparse file starting like a JPEG
(``video.jpg``), a FIFO, a symbolic link to ``/etc/passwd``, a link to a valid photo outside the
root, a symbolic link loop and a link to a folder outside the root. Every job -- ``align_folder`` and
``kfm align``, training roots (``load_training_set`` + a full epoch, ``load_identity_folder``,
``make_folder_dataset``), ``Gallery.build`` and ``kfm embed`` / ``kfm gallery add`` on folders --
runs in a subprocess limited to 3 GB of address space (TensorFlow needs about 2 GB of it to import)
and is checked to finish with a peak RSS under 1.5 GB, the job itself in under 30 s: it goes on past
every bad entry, reports each with its reason, never opens the special files or the links out of
the root, and keeps every valid photo.

Before the fix: the 4 GiB file was read whole by the training-root scan (``np.fromfile``) and by
``load_identity_folder`` / ``make_folder_dataset`` (MemoryError under the limit); links out of the
root were read and trained on, aligned, embedded or added to galleries (``/etc/passwd`` was read); a
link to an outside folder became a gallery identity; ``kfm align`` (human-readable) died with a
UnicodeEncodeError traceback on a name that is not UTF-8; ``kfm embed`` silently left out FIFOs and
loops and read the links out of the folder.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from testing import REPO, repo_env, result_of

from keras_facemargin.data.formats.folders import list_identity_folder, unescape_identity_name
from keras_facemargin.utils.folder_files import display_path, list_tree, read_regular_file

WORKER = str(Path(__file__).with_name("folder_jobs_worker.py"))
LIMIT_BYTES = 3 << 30  # address space (TensorFlow maps ~2 GB on import); the RSS bound is checked below
PEAK_RSS_MB = 1536
JOB_SECONDS = 30
TIMEOUT_S = 180  # the interpreter, TensorFlow's import and the job, on a loaded 2-core machine

NON_UTF8 = os.fsdecode(b"caf\xe9.png")
NEWLINE = "new\nline.png"
LONG = "x" * 246 + ".png"  # 250 bytes
VALID = ("good.png", NON_UTF8, NEWLINE, LONG)
UNDECODABLE = ("trunc.jpg", "junk.jpg")
REFUSED = {"fifo.jpg": "not_a_file", "loop.jpg": "not_a_file", "passwd.jpg": "outside_root",
           "out.png": "outside_root", "video.jpg": "too_large"}


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def _write(path, image, ext=".png"):
    os.makedirs(os.fsencode(str(path.parent)), exist_ok=True)
    with open(os.fsencode(str(path)), "wb") as f:  # names that are not UTF-8: through the bytes path
        f.write(cv2.imencode(ext, image)[1].tobytes())


def _face(k=0):
    rng = np.random.default_rng(k)
    return rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)


def _fill(folder: Path, outside: Path):
    """The valid photos and every hostile entry in ``folder``; ``outside`` holds a valid photo."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(VALID):
        _write(folder / name, _face(k))
    jpeg = cv2.imencode(".jpg", _face(9))[1].tobytes()
    (folder / "trunc.jpg").write_bytes(jpeg[:120])
    (folder / "junk.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 2)
    with open(folder / "video.jpg", "wb") as f:  # a JPEG header, then 4 GiB of holes
        f.write(jpeg)
        f.truncate(4 << 30)
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("/etc/passwd", folder / "passwd.jpg")
    os.symlink(outside / "o.png", folder / "out.png")
    os.symlink("loop.jpg", folder / "loop.jpg")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs and symbolic links (POSIX)")
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    outside.mkdir()
    for k in range(3):
        _write(outside / ("o.png" if k == 0 else f"o{k}.png"), _face(20 + k))
    _fill(base / "raw" / "alice", outside)
    os.symlink(outside, base / "raw" / "linked")
    train = base / "train"
    _fill(train / "alice", outside)
    for ident in ("bob", os.fsdecode(b"jos\xe9"), "new\nline"):
        for k in range(2):
            _write(train / ident / f"{k}.png", _face(30 + k))
    os.symlink(outside, train / "linked")
    _fill(base / "people" / "alice", outside)
    _write(base / "people" / "bob" / "1.png", _face(40))
    os.symlink(outside, base / "people" / "linked")
    only_bad = base / "only_bad"
    only_bad.mkdir()
    os.mkfifo(only_bad / "fifo.jpg")
    os.symlink("/etc/passwd", only_bad / "passwd.jpg")
    os.symlink(outside / "o.png", only_bad / "out.png")
    os.symlink("loop.jpg", only_bad / "loop.jpg")
    os.symlink(outside, only_bad / "dir.jpg")
    return base


def _job(job, tree_path):
    proc = subprocess.run([sys.executable, WORKER, job, str(tree_path)], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=repo_env(TF_CPP_MIN_LOG_LEVEL="2"), preexec_fn=_limit)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    res = result_of(proc.stdout, proc.stderr)
    assert res["peak_mb"] <= PEAK_RSS_MB and res["seconds"] <= JOB_SECONDS, res
    return res


def _kfm(*args, env=None):
    env = repo_env(TF_CPP_MIN_LOG_LEVEL="2", PYTHONIOENCODING="utf-8:strict", **(env or {}))
    proc = subprocess.run([sys.executable, WORKER, "cli", *map(str, args)], capture_output=True, timeout=TIMEOUT_S,
                          env=env, preexec_fn=_limit, cwd=str(REPO))
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", "replace")  # stdout: valid UTF-8
    assert "Traceback" not in err and "Traceback" not in out, err[-4000:]
    peak = [int(line.split()[1]) for line in err.splitlines() if line.startswith("PEAK_RSS_MB ")]
    assert peak and peak[-1] <= PEAK_RSS_MB, err[-3000:]
    return proc.returncode, out, err


def _esc(*parts):
    return display_path("/".join(parts))


# ------------------------------------------------------------------------------- in-process units
def test_display_path_is_one_reversible_line():
    for raw in (b"caf\xe9.jpg", b"new\nline\ttab\r.jpg", b"back\\slash\x01\x7f.jpg", "h\u00e9llo \u4e16.jpg".encode()):
        shown = display_path(raw)
        assert "\n" not in shown and "\r" not in shown and "\t" not in shown
        shown.encode("utf-8")  # no lone surrogate
        assert os.fsencode(unescape_identity_name(shown)) == raw
    assert display_path("alice/001.jpg") == "alice/001.jpg"


def test_listing_and_reading_refuse_without_opening(tree):
    files, refused = list_tree(tree / "raw", suffixes=(".jpg", ".png"))
    assert sorted(files) == sorted(f"alice/{n}" for n in VALID + UNDECODABLE + ("video.jpg",))
    assert {r.path: r.reason for r in refused} == {f"alice/{n}": r for n, r in REFUSED.items() if n != "video.jpg"}
    _, capped = list_tree(tree / "raw", suffixes=(".jpg",), max_bytes=1 << 20)
    assert {r.path: r.reason for r in capped}["alice/video.jpg"] == "too_large"
    assert read_regular_file(tree / "raw" / "alice" / "fifo.jpg", 1 << 20)[1][0] == "not_a_file"  # no block
    assert read_regular_file(tree / "raw" / "alice" / "video.jpg", 1 << 20)[1][0] == "too_large"
    assert read_regular_file(tree / "raw" / "alice" / "loop.jpg", 1 << 20)[1][0] == "not_a_file"
    data, problem = read_regular_file(tree / "raw" / "alice" / "good.png", 1 << 20)
    assert problem is None and data[:4] == b"\x89PNG"


def test_follow_links_accepts_links_out_of_the_root_only(tree):
    """Opt-in for a folder of the user's own links to photos kept elsewhere: special files stay refused."""
    files, refused = list_tree(tree / "raw", suffixes=(".jpg", ".png"), follow_links=True)
    assert {"alice/out.png", "alice/passwd.jpg"} <= set(files)
    assert {r.path: r.reason for r in refused} == {"alice/fifo.jpg": "not_a_file", "alice/loop.jpg": "not_a_file"}
    ids, _ = list_identity_folder(tree / "train", follow_links=True)
    assert sorted(ids["linked"]) == ["linked/o.png", "linked/o1.png", "linked/o2.png"]
    refused = []
    ids, _ = list_identity_folder(tree / "train", refused=refused)
    assert "linked" not in ids and ("linked/", "outside_root") in [(r.path, r.reason) for r in refused]


def test_sockets_devices_and_unreadable_files(tmp_path):
    import socket

    folder = tmp_path / "s"
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "s.jpg"))
    except OSError:  # a path over the socket name limit
        pytest.skip("cannot bind a UNIX socket here")
    os.symlink("/dev/null", folder / "dev.jpg")
    try:
        _, refused = list_tree(folder, suffixes=(".jpg",))
        assert {r.path: r.reason for r in refused} == {"s.jpg": "not_a_file", "dev.jpg": "outside_root"}
        _, refused = list_tree(folder, suffixes=(".jpg",), follow_links=True)  # a device is never a photo
        assert {r.path: r.detail for r in refused}["dev.jpg"].startswith("a symbolic link to a device")
        assert read_regular_file("/dev/zero", 1 << 20)[1][0] == "not_a_file"  # never read (endless)
    finally:
        sock.close()
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode: the unreadable-file case does not apply")
    locked = folder / "locked.jpg"
    _write(locked, _face())
    locked.chmod(0)
    assert read_regular_file(locked, 1 << 20)[1][0] == "unreadable"


# ------------------------------------------------------------------------------- limited subprocesses
@pytest.mark.slow
def test_align_folder_goes_on_and_reports_each_file(tree):
    res = _job("align", tree)
    assert res["aligned"] == sorted(_esc("alice", n) for n in VALID)  # every valid name, nothing else
    expected = {_esc("alice", n): r for n, r in REFUSED.items()}
    expected["linked"] = "outside_root"
    for name in UNDECODABLE:
        assert res["failed"].pop(_esc("alice", name)) in ("unreadable", "not_an_image")
    assert res["failed"] == expected
    assert res["counts"]["total"] == len(VALID) + len(UNDECODABLE) + len(REFUSED) + 1


@pytest.mark.slow
def test_kfm_align_one_json_object_per_failure_and_escaped_text(tree, tmp_path):
    landmarks = tmp_path / "lm.txt"
    landmarks.write_text("alice/good.png 20 25 40 25 30 35 22 45 38 45\n")
    code, out, err = _kfm("align", "--input", tree / "raw", "--output", tmp_path / "a", "--landmarks", landmarks,
                          "--json", "--no-progress")
    assert code == 0, err[-3000:]
    objs = [json.loads(line) for line in out.splitlines()]
    assert objs[-1]["status"] == "ok" and objs[-1]["aligned"] == 1
    failed = {o["file"]: o for o in objs[:-1]}
    assert all(o["status"] == "error" and o["file"] in o["message"] for o in failed.values())
    root = display_path(str(tree / "raw"))
    for name, reason in REFUSED.items():
        assert failed[f"{root}/alice/{name}"]["error"] == reason
    assert failed[f"{root}/alice/caf\\xe9.png"]["error"] == "no_face"  # not in the landmarks file
    assert failed[f"{root}/alice/new\\nline.png"]["error"] == "no_face"
    assert failed[f"{root}/linked"]["error"] == "outside_root"
    # the human-readable form: one line per file, valid UTF-8 (the run died on the first such name before)
    code, out, err = _kfm("align", "--input", tree / "raw", "--output", tmp_path / "b", "--landmarks", landmarks,
                          "--no-progress")
    assert code == 0 and "alice/caf\\xe9.png" in out and "alice/new\\nline.png" in out, err[-3000:]
    assert "not aligned" in err and "outside_root" in err


@pytest.mark.slow
def test_training_root_trains_past_bad_files(tree):
    res = _job("train", tree)
    assert res["classes"] == sorted(["alice", "bob", "jos\\xe9", "new\\nline"])  # `linked` is refused
    assert res["samples"] == len(VALID) + len(UNDECODABLE) + 6  # the undecodable ones fail while training
    assert res["seen"] == res["samples"] - len(UNDECODABLE)
    expected = {_esc("alice", n): r for n, r in REFUSED.items()}
    expected["linked"] = "outside_root"
    assert res["up_front"] == expected
    assert sorted(res["while_training"]) == sorted(_esc("alice", n) for n in UNDECODABLE)


@pytest.mark.slow
def test_identity_folder_and_folder_dataset_skip_bad_files(tree):
    res = _job("identity_folder", tree)
    assert res["images"] == len(VALID) + 6 and res["classes"] == sorted(["alice", "bob", "jos\\xe9", "new\\nline"])
    refused = {_esc("alice", n): r for n, r in REFUSED.items()}
    refused["linked/"] = "outside_root"
    assert {k: v for k, v in res["failed"].items() if k in refused} == refused
    res = _job("folder_dataset", tree)
    assert res["seen"] == len(VALID) + 6
    assert res["by_reason"] == {"not_a_file": 2, "outside_root": 3, "too_large": 1, "bad_image": 2}


@pytest.mark.slow
def test_gallery_build_skips_and_reports(tree):
    res = _job("gallery", tree)
    assert res["identities"] == ["alice", "bob"] and res["counts"] == {"alice": len(VALID), "bob": 1}
    expected = {_esc("alice", n): r for n, r in REFUSED.items()}
    expected["linked"] = "outside_root"
    for name in UNDECODABLE:
        assert res["skipped"].pop(_esc("alice", name)) in ("unreadable", "not_an_image")
    assert res["skipped"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("command", ["embed", "gallery"])
def test_kfm_embed_and_gallery_add_refuse_without_loading_the_model(tree, tmp_path, command):
    """A folder of refused entries only: one JSON object each (exit 5), no model loaded, nothing written."""
    folder = tree / "only_bad"
    if command == "embed":
        args = ["embed", folder, "--output", tmp_path / "e.npz"]
    else:
        args = ["gallery", "add", tmp_path / "g.db", "alice", folder]
    code, out, err = _kfm(*args, "--json", "--no-progress")
    assert code == 5, out + err[-3000:]
    objs = [json.loads(line) for line in out.splitlines()]
    got = {o["file"]: o["error"] for o in objs}
    root = display_path(str(folder))
    assert got == {f"{root}/fifo.jpg": "not_a_file", f"{root}/loop.jpg": "not_a_file",
                   f"{root}/passwd.jpg": "outside_root", f"{root}/out.png": "outside_root",
                   f"{root}/dir.jpg": "outside_root"}
    assert all(o["status"] == "error" and o["file"] in o["message"] for o in objs)
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "g.db").exists()


@pytest.mark.slow
def test_kfm_embed_real_photos_with_hostile_names(lfw_root, tmp_path):
    """The real model on 2 LFW photos named with a byte that is not UTF-8 and a newline, beside every
    hostile entry: both embedded, each bad entry reported once, exit 0, names escaped in the text."""
    folder, outside = tmp_path / "photos", tmp_path / "outside"
    outside.mkdir()
    _write(outside / "o.png", _face(1))
    _fill(folder, outside)
    for name in VALID:
        os.unlink(os.fsencode(str(folder / name)))
    bush = sorted((lfw_root / "images" / "George_W_Bush").iterdir())[:2]
    for src, name in zip(bush, (NON_UTF8.replace(".png", ".jpg"), "new\nline.jpg")):
        with open(os.fsencode(str(folder / name)), "wb") as f:
            f.write(src.read_bytes())
    code, out, err = _kfm("embed", folder, "--output", tmp_path / "e.npz", "--json", "--no-progress")
    assert code == 0, err[-3000:]
    objs = [json.loads(line) for line in out.splitlines()]
    assert objs[-1]["embedded"] == 2 and objs[-1]["failed"] == len(REFUSED) + len(UNDECODABLE)
    root = display_path(str(folder))
    assert sorted(o["source"] for o in objs if "source" in o) == [f"{root}/caf\\xe9.jpg", f"{root}/new\\nline.jpg"]
    errors = {o["file"]: o["error"] for o in objs if o["status"] == "error"}
    assert {k: v for k, v in errors.items() if k.rsplit("/", 1)[1] in REFUSED} == {
        f"{root}/{n}": r for n, r in REFUSED.items()}
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert sorted(os.fsencode(p) for p in z["paths"].tolist()) == sorted(
            os.fsencode(str(folder / n)) for n in (NON_UTF8.replace(".png", ".jpg"), "new\nline.jpg"))
        assert len(z["failed_paths"]) == len(REFUSED) + len(UNDECODABLE)
