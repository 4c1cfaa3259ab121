"""Untrusted files never crash, exhaust or fool the readers (issue 12).

One worker subprocess (``tests/untrusted_cases.py``) imports the package, then caps its address
space with ``RLIMIT_AS`` at its size after the imports plus :data:`HEADROOM_MB` and runs

* every crafted input of :func:`untrusted_cases.crafted_cases` (memory bombs, CPU hangs,
  undocumented exceptions, wrong data accepted) for every reader, and
* a bounded, seeded hypothesis mutation run (:data:`EXAMPLES` examples per reader) over files
  written by the package's own writers,

reporting one JSON line per input. A crafted input must raise the expected typed error (or be
collected as a typed bad record), name its file, finish within its time bound and raise the
peak RSS by less than :data:`MAX_PEAK_MB`; a mutated input may be accepted (then the reader's
invariants must hold), rejected with a typed error or ``OSError``, never anything else. A
crash (signal) or a hang (timeout) of the worker fails every test and names the input.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import untrusted_cases  # noqa: E402

HEADROOM_MB = 1536
MAX_PEAK_MB = 512
EXAMPLES = 40
SEED = 12
TIMEOUT_S = 420
pytestmark = pytest.mark.xdist_group("untrusted_inputs")  # the cases' subprocess runs once per module


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    script = Path(untrusted_cases.__file__)
    cmd = [sys.executable, str(script), "--crafted", "--mutations", str(EXAMPLES), "--seed", str(SEED),
           "--headroom-mb", str(HEADROOM_MB)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                              cwd=script.parents[1])
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = f"timeout after {TIMEOUT_S} s", "timeout"
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if not recs or recs[-1].get("kind") != "done":
        started = [r for r in recs if "start" in r]
        last = f"{started[-1]['reader']}: {started[-1]['start']}" if started else "(before the first input)"
        pytest.fail(f"untrusted-input worker died (rc={rc}) during {last}\n{err[-3000:]}")
    return recs


def _crafted(results, reader):
    return [r for r in results if r.get("kind") == "crafted" and r["reader"] == reader]


@pytest.mark.slow
def test_memory_ceiling_is_in_force(results):
    limit = [r for r in results if r.get("kind") == "limit"][0]
    assert limit["control"] == "MemoryError", limit
    assert limit["rlimit_as_mb"] <= limit["vm_size_mb"] + HEADROOM_MB + 64


@pytest.mark.slow
@pytest.mark.parametrize("reader", untrusted_cases.READERS)
def test_crafted_inputs_are_typed_bounded_and_name_the_file(results, reader):
    got = _crafted(results, reader)
    assert len(got) == len(untrusted_cases.crafted_cases(reader))
    problems = []
    for r in got:
        if r["expect"] == "bad":
            ok = r["outcome"] == untrusted_cases.BAD
        else:
            ok = r["outcome"] == untrusted_cases.TYPED and r["expect"] in r.get("mro", [])
        if not ok:
            problems.append(f"{r['case']}: expected {r['expect']}, got {r['outcome']} {r.get('type')}: "
                            f"{r.get('message', '')[:400]}")
        elif not r.get("names_file"):
            problems.append(f"{r['case']}: message does not name {r['file']}: {r.get('message', '')[:300]}")
        elif r.get("names_node") is False:
            problems.append(f"{r['case']}: message does not name {r['node']}: {r.get('message', '')[:300]}")
        if r.get("seconds", 0) > r["max_seconds"]:
            problems.append(f"{r['case']}: took {r['seconds']} s (bound {r['max_seconds']} s)")
        if r.get("peak_mb", 0) > MAX_PEAK_MB:
            problems.append(f"{r['case']}: peak RSS grew by {r['peak_mb']} MiB (bound {MAX_PEAK_MB})")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("reader", untrusted_cases.READERS)
def test_mutated_writer_outputs_are_accepted_or_typed(results, reader):
    rec = [r for r in results if r.get("kind") == "mutation" and r["reader"] == reader][0]
    assert rec["n_failures"] == 0, json.dumps(rec["failures"], indent=1)[:4000]
    assert sum(rec["counts"].values()) == EXAMPLES


# --------------------------------------------------------------- in-process unit checks
def test_image_header_size_reads_every_admitted_format():
    import cv2

    from keras_facemargin.utils.images import check_image_bytes, image_header_size

    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for ext, fmt in ((".jpg", "jpeg"), (".png", "png"), (".bmp", "bmp"), (".webp", "webp")):
        assert tuple(image_header_size(cv2.imencode(ext, img)[1])) == (fmt, 37, 53)
    assert tuple(image_header_size(cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])[1])) == ("webp", 37, 53)
    assert tuple(image_header_size(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1])) == ("jpeg", 37, 53)
    assert image_header_size(untrusted_cases.png_bomb()) == ("png", 30000, 30000)
    assert image_header_size(untrusted_cases.jpeg_bomb()) == ("jpeg", 65000, 65000)
    for junk in (b"", b"\xff\xd8\xff", b"II*\0" * 10, b"GIF89a" + b"\0" * 20, b"\x89PNG\r\n\x1a\n" + b"\0" * 20):
        assert image_header_size(junk) is None
    hdr, why = check_image_bytes(untrusted_cases.png_bomb(), max_pixels=1 << 20)
    assert hdr.width == 30000 and "max_image_pixels" in why


def test_recordio_close_after_a_bad_record_scan_releases_the_map(tmp_path):
    from keras_facemargin.data.formats.recordio import RecordIOReader

    untrusted_cases.seed_files("recordio", tmp_path)
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    offsets = [int(line.split()[1]) for line in (tmp_path / "train.idx").read_text().split("\n") if line]
    raw[offsets[2]] ^= 0xFF  # break the magic of the second image record
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    with RecordIOReader(tmp_path) as r:
        sc = r.scan()
        assert len(sc["bad"]) == 1 and sc["bad"][0].__traceback__ is None
        mm = r._mm
    assert mm.closed and r._file.closed
    r.close()  # idempotent


def test_bin_pickle_allowlist_is_documented():
    from keras_facemargin.evaluation import bin_sets

    assert set(bin_sets.BIN_PICKLE_ALLOWLIST) == {
        "_codecs.encode", "numpy.dtype", "numpy.ndarray",
        *(f"numpy.{c}.{n}" for c in ("core", "_core") for n in ("multiarray._reconstruct", "multiarray.scalar",
                                                                  "numeric._frombuffer"))}
    for name in bin_sets.BIN_PICKLE_ALLOWLIST:  # every entry resolves to a stand-in, not numpy / _codecs
        obj = bin_sets._ALLOWED_GLOBALS[tuple(name.rsplit(".", 1))]
        assert getattr(obj, "__module__", bin_sets.__name__) == bin_sets.__name__ or obj is bin_sets._NDARRAY


def test_pth_pickle_allowlist_is_documented():
    from keras_facemargin.convert import pth

    storages = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
    assert set(pth.PTH_PICKLE_ALLOWLIST) == {
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        *(f"torch.{s}Storage" for s in storages)}
    doc = " ".join(pth.read_torch_checkpoint.__doc__.split())
    for name in ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                 *(f"{s}Storage" for s in storages)):
        assert name in doc, name
    for target in pth._PTH_GLOBALS.values():  # stand-ins of this module, never torch / collections
        assert getattr(target, "__module__", pth.__name__) == pth.__name__


def test_pth_zip_caps_are_keywords(tmp_path):
    import pickle
    import zipfile

    from keras_facemargin.convert import pth
    from keras_facemargin.errors import ExternalDataError, UnsafeWeightsError, UntrustedFileError, WeightsConversionError

    path = tmp_path / "zeros.pth"
    n = 1 << 19  # 2 MiB of float32 zeros, deflated to a few KiB
    pkl = untrusted_cases._pickle({"w": untrusted_cases._tensor("0", n, 0, (n,), (1,))})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", bytes(4 * n))
    with pytest.raises(WeightsConversionError, match="zeros.pth: .*archive/data/0.*max_entry_bytes") as err:
        pth.read_torch_state_dict(path)
    assert isinstance(err.value, UntrustedFileError) and err.value.where == "archive/data/0"
    with pytest.raises(WeightsConversionError, match="max_ratio=16"):
        pth.read_torch_state_dict(path, max_entry_bytes=8 << 20)
    with pytest.raises(WeightsConversionError, match="max_total_bytes"):
        pth.read_torch_state_dict(path, max_entry_bytes=8 << 20, max_ratio=1e4, max_total_bytes=1 << 20)
    sd = pth.read_torch_state_dict(path, max_entry_bytes=8 << 20, max_ratio=1e4)
    assert sd["w"].shape == (n,) and not sd["w"].any()
    assert issubclass(UnsafeWeightsError, pickle.UnpicklingError)
    assert issubclass(ExternalDataError, WeightsConversionError)


def test_onnx_external_data_is_never_read_from_the_current_directory(tmp_path, monkeypatch):
    """onnx.numpy_helper.to_array reads an external tensor relative to the current directory:
    no tensor anywhere in the model (initializer, Constant, local function) may get there."""
    import builtins

    import onnx
    import onnx.external_data_helper

    from keras_facemargin.convert.insightface_onnx import onnx_to_state_dict
    from keras_facemargin.errors import ExternalDataError

    cwd, models = tmp_path / "cwd", tmp_path / "models"
    cwd.mkdir()
    models.mkdir()
    (cwd / "w.bin").write_bytes(bytes(1 << 16))
    monkeypatch.chdir(cwd)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor",
                        lambda *a, **k: pytest.fail("onnx loaded external data"))

    cases = {c.name: c for c in untrusted_cases.crafted_cases("onnx")}
    for i, name in enumerate(("external initializer, relative", "external Constant in a local function (relative)",
                              "external Constant in an If branch")):
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "r.onnx").write_bytes(untrusted_cases.tiny_iresnet_onnx().SerializeToString())
        cases[name].build(d)
        (d / "w.bin").unlink(missing_ok=True)  # only ./w.bin (the current directory's) exists
        path = d / "r.onnx"
        for allow in (False, True):
            with pytest.raises(ExternalDataError, match="r.onnx"):
                onnx_to_state_dict(path, allow_external_data=allow)
            with pytest.raises(ExternalDataError):
                onnx_to_state_dict(onnx.load(str(path), load_external_data=False), allow_external_data=allow)
    assert not [f for f in opened if f.endswith("w.bin")], opened
