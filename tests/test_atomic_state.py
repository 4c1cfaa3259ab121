"""State files survive kill -9: a file is always its old or its new content, and a run resumes.

* A process rewriting a 1 MB JSON file in a loop is SIGKILLed at random moments: every time, the
  file parses and is one of the two documents.
* A training run SIGKILLed halfway through writing history.jsonl, config.json and data_report.json
  (tests/atomic_state_worker.py cuts the write in two) resumes from its checkpoint, from the config
  file it left. Before the fix these files were written in place: the torn file made the resume fail
  (JSONDecodeError in TrainConfig.from_json, in the data check of the resume and in truncate_history).
* Threads rewriting one file never collide on the temporary name (the checkpoint writer used
  ``<file>.tmp``, shared by every writer).
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from testing import repo_env

from keras_facemargin.utils.atomic import atomic_path, atomic_write_json, atomic_write_text, atomic_writer

HERE = Path(__file__).parent
WORKER = HERE / "atomic_state_worker.py"


def test_rewrite_killed_at_random_moments_leaves_old_or_new(tmp_path):
    path = tmp_path / "state.json"
    rng = random.Random(23)
    seen = set()
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, str(WORKER), "rewrite", str(path)], stdout=subprocess.PIPE,
                                text=True, env=repo_env())
        try:
            assert proc.stdout.readline().strip() == "ready"
            threading.Event().wait(rng.uniform(0.0, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        doc = json.loads(path.read_text())  # never torn
        assert doc["version"] in ("a", "b") and doc["pad"] == doc["version"] * (1 << 20)
        seen.add(doc["version"])
    assert seen == {"a", "b"}  # the kills did land at different points of the loop
    # Hidden temporaries of killed writers may be left behind (never read); nothing else.
    assert all(n == "state.json" or (n.startswith(".state.json.") and n.endswith(".tmp"))
               for n in os.listdir(tmp_path))


def test_threads_writing_one_file_never_share_a_temporary(tmp_path):
    path = tmp_path / "shared.json"
    errors, opened = [], []
    real_open = os.open

    def spy_open(p, flags, *args):
        opened.append(os.fsdecode(p))
        return real_open(p, flags, *args)

    def writer(k):
        try:
            for i in range(100):
                atomic_write_json(path, {"writer": k, "i": i, "pad": "x" * 5000})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    os.open = spy_open
    try:
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.open = real_open
    assert not errors, errors[:3]
    temps = [p for p in opened if p.endswith(".tmp")]
    assert len(temps) == 800 and len(set(temps)) == 800  # one fresh name per write
    doc = json.loads(path.read_text())
    assert doc["i"] == 99 and 0 <= doc["writer"] < 8
    assert os.listdir(tmp_path) == ["shared.json"]  # no temporary left behind


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})  # not serialisable: nothing touched
    with pytest.raises(RuntimeError):
        with atomic_writer(path, "w") as f:
            f.write('{"v": 2')
            raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            Path(tmp).write_text("{")
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]
    atomic_write_text(path, "x\r\ny\n")
    assert path.read_bytes() == b"x\r\ny\n"  # newlines written as given


def _faces(root, identities=4, per_identity=3):
    rng = np.random.default_rng(0)
    for k in range(identities):
        (root / f"id{k}").mkdir(parents=True)
        for i in range(per_identity):
            ok, buf = cv2.imencode(".png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            (root / f"id{k}" / f"{i}.png").write_bytes(buf.tobytes())
    return root


def _train(*args, kill=None):
    env = repo_env()
    env.pop("TF_CONFIG", None)
    if kill:
        env["KFM_KILL_WRITING"] = kill
    proc = subprocess.run([sys.executable, str(WORKER), "train", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    if kill:
        assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-4000:]
        return None
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_training_killed_while_writing_state_files_resumes(tmp_path):
    from keras_facemargin.training.config import TrainConfig

    root, out = _faces(tmp_path / "faces"), tmp_path / "runs"
    run_dir = out / "tiny"
    # 12 images, batch 2: 6 steps per epoch, a checkpoint every 2 steps. Killed while history.jsonl
    # is written at the end of epoch 0 (its checkpoints of steps 2, 4, 6 are on disk).
    _train(root, out, 2, kill="history.jsonl")
    assert (run_dir / "checkpoints").is_dir()
    # Killed while config.json is rewritten (epochs 3 instead of 2), then while data_report.json is.
    _train(root, out, 3, kill="config.json")
    config = TrainConfig.from_json(run_dir / "config.json")  # parses: the old or the new config
    assert config.epochs in (2, 3)
    report_before = json.loads((run_dir / "data_report.json").read_text())
    _train(root, out, 2, "--config-from", run_dir / "config.json", kill="data_report.json")
    assert json.loads((run_dir / "data_report.json").read_text()) == report_before
    # The run resumes from the config file it left, and every epoch is logged once.
    result = _train(root, out, 2, "--config-from", run_dir / "config.json")
    assert result["resumed_from_step"] >= 4
    assert result["epochs"] == [0, 1]
    assert result["fingerprint"] == report_before["fingerprint"]
    assert [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()] == [0, 1]
