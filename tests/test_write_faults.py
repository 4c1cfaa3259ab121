"""Write faults (issue 23, part 7): a file-size limit hit in the middle of a state or gallery write.

Each writer runs in a subprocess with ``RLIMIT_FSIZE`` set (and ``SIGXFSZ`` ignored), so the kernel
refuses the write with ``EFBIG`` part-way through, as a full disk would with ``ENOSPC``. After the
fault: the error is an ``OSError`` (state files) or a typed ``GalleryError`` (galleries), the old
file is whole and readable, no temporary is left behind, and a later write without the limit works.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from testing import repo_env

LIMIT = 256 << 10  # bytes any file of the subprocess may reach

STATE = r"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
from keras_facemargin.utils.atomic import atomic_write_json
try:
    atomic_write_json(sys.argv[1], {"v": 2, "pad": "x" * (4 * int(sys.argv[2]))})
except OSError as e:
    print(json.dumps({"error": type(e).__name__, "errno": e.errno}))
"""

GALLERY = r"""
import json, resource, signal, sys
import numpy as np
from keras_facemargin.errors import GalleryError
from keras_facemargin.inference.gallery_store import GalleryStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = GalleryStore(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
rng = np.random.default_rng(1)
rows = []
for i in range(4000):  # 4,000 x 128 float32 = 2 MB, far over the limit
    v = rng.normal(size=128).astype(np.float32)
    rows.append((f"big{i}", f"p{i}", 1, v / np.linalg.norm(v)))
try:
    store.add_photos("mallory", rows)
    print(json.dumps({"error": None}))
except GalleryError as e:
    print(json.dumps({"error": "GalleryError", "reason": e.reason, "message": str(e)}))
"""


def _run(code, *args):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=repo_env(TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_state_file_write_fault_keeps_the_old_file(tmp_path):
    from keras_facemargin.utils.atomic import atomic_write_json

    path = tmp_path / "data_report.json"
    atomic_write_json(path, {"v": 1})
    got = _run(STATE, path, LIMIT)
    assert got == {"error": "OSError", "errno": 27}  # EFBIG
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["data_report.json"]  # the partial temporary was removed
    atomic_write_json(path, {"v": 3})
    assert json.loads(path.read_text()) == {"v": 3}


@pytest.mark.slow
def test_gallery_write_fault_is_typed_and_leaves_the_gallery_whole(tmp_path):
    from keras_facemargin.inference.gallery import Gallery
    from keras_facemargin.inference.gallery_store import GalleryStore

    rng = np.random.default_rng(0)
    path = tmp_path / "people.db"
    store = GalleryStore.create(path, {"model": "m", "embedding_dim": 128, "image_size": [112, 112],
                                       "normalization": {"mean": 127.5, "std": 128.0}, "flip": True},
                                rng.normal(size=128).astype(np.float32))
    v = rng.normal(size=(2, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store.add_photos("alice", [("k0", "a0", 1, v[0]), ("k1", "a1", 1, v[1])])
    before = Gallery.load(path)
    got = _run(GALLERY, path, LIMIT)
    assert got["error"] == "GalleryError" and got["reason"] == "write_failed", got
    assert str(path) in got["message"] and "rolled back" in got["message"]
    after = Gallery.load(path)  # the transaction was rolled back: the file is whole, alice unchanged
    assert after.identities == before.identities == ["alice"]
    np.testing.assert_array_equal(after.embeddings, before.embeddings)
    assert GalleryStore(path).add_photos("bob", [("k2", "b0", 1, v[0])])["num_images"] == 1  # and writable
    assert Gallery.load(path).identities == ["alice", "bob"]
