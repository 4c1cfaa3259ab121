"""Longer mutation-fuzzing campaigns against the readers of outside data (issue 12).

For each reader a worker subprocess imports the package, caps its address space with
``RLIMIT_AS`` (its size after the imports + ``--headroom-mb``) and, until its time is up, mutates
the files of a small valid set written by the package's own writers
(``tests/untrusted_cases.py``: bit flips, interesting int32/int64 values, insertions, deletions,
truncations, duplicated chunks), runs the reader the way a user would and classifies the
outcome:

* ``typed``: a typed error (``keras_facemargin.errors.UntrustedFileError`` subclass) was raised;
* ``bad_records``: accepted, with the bad records reported as typed errors;
* ``accepted``: accepted, and the reader's invariants hold;
* ``oserror``: ``OSError`` (e.g. a name pointing at a file that does not exist);
* failures: ``wrong_type`` (any other exception), ``invariant`` (accepted with wrong data),
  ``slow`` (over ``--max-seconds``), ``memory`` (peak RSS growth over ``--max-peak-mb``),
  ``crash`` (the worker died: signal, memory limit, hang; it is restarted).

Failing inputs are saved under ``--out`` (one folder per failure, with the mutated set and a
``failure.json``). Example::

    nice -n 15 python benchmarks/fuzz.py --seconds 60                 # 1 min per reader
    nice -n 15 python benchmarks/fuzz.py --readers bin,recordio --seconds 600 --json fuzz.json
    nice -n 15 python benchmarks/fuzz.py --readers photo --seconds 120   # the photo decoder (issue 23)

The ``photo`` reader mutates small JPEG/PNG/WebP/GIF/BMP/TIFF files made with ``cv2.imencode``
and reads each with ``keras_facemargin.utils.images.read_photo`` (header check, size and pixel
caps, ``decode_photo``): a refusal must be a ``(reason, detail)`` pair, an accepted photo an RGB
uint8 image within ``PHOTO_MAX_PIXELS``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

FAILURES = ("wrong_type", "invariant", "slow", "memory", "crash")
#: Readers defined here rather than in ``tests/untrusted_cases.py``.
LOCAL_READERS = ("photo",)
PHOTO_FORMATS = (".jpg", ".png", ".webp", ".gif", ".bmp", ".tiff")
PHOTO_REASONS = ("not_found", "not_an_image", "unreadable", "too_large")


def photo_seed_files(d):
    """Small real photos in every admitted container, written with ``cv2.imencode`` (issue 23)."""
    import cv2
    import numpy as np

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (40, 30), interpolation=cv2.INTER_LINEAR)
    out = []
    for ext in PHOTO_FORMATS:
        ok, buf = cv2.imencode(ext, base)
        assert ok, ext
        (d / f"seed{ext}").write_bytes(buf.tobytes())
        out.append(d / f"seed{ext}")
    return out


def photo_run_one(d):
    """``read_photo`` on every file of ``d``: typed refusal (a reason tuple), or an RGB image whose size
    is the header's (and within the pixel cap); anything else is a failure."""
    import traceback

    import numpy as np
    import untrusted_cases as uc

    from keras_facemargin.utils.images import PHOTO_MAX_PIXELS, photo_header, read_photo

    uc._reset_peak()
    base = uc._vm_kb("VmRSS")
    t0 = time.perf_counter()
    res = {"outcome": "typed"}
    try:
        accepted = 0
        for f in sorted(Path(d).iterdir()):
            img, problem = read_photo(f)
            if img is None:
                if not (isinstance(problem, tuple) and problem[0] in PHOTO_REASONS and isinstance(problem[1], str)):
                    res = {"outcome": "invariant", "message": f"{f.name}: bad refusal {problem!r}"}
                    break
                continue
            hdr = photo_header(f.read_bytes()[:65536])
            ok = (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
                  and img.shape[0] * img.shape[1] <= PHOTO_MAX_PIXELS)
            if not ok:
                res = {"outcome": "invariant", "message": f"{f.name}: {getattr(img, 'shape', None)} header {hdr}"}
                break
            accepted += 1
        else:
            res = {"outcome": "accepted" if accepted == len(list(Path(d).iterdir())) else "typed"}
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        res = {"outcome": "wrong_type", "type": type(e).__name__,
               "message": str(e)[:300] + " | " + "".join(traceback.format_exception(e))[-900:]}
    res["seconds"] = round(time.perf_counter() - t0, 3)
    res["peak_mb"] = round((uc._vm_kb("VmHWM") - base) / 1024, 1)
    return res


def worker(args):
    """Runs in the subprocess: mutate, run, emit one JSON line per input."""
    import untrusted_cases as uc

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kfm_fuzz_"))
    try:
        local = args.reader in LOCAL_READERS
        if local:
            import tensorflow  # noqa: F401  (same imports as the other readers before the limit)

            import keras_facemargin.utils.images  # noqa: F401

            photo_run_one(Path(photo_seed_files(tmp / "warm")[0]).parent)
        else:
            uc.warm_up(tmp)
        uc.set_memory_limit(args.headroom_mb)
        seed_dir = tmp / "seed"
        seeds = photo_seed_files(seed_dir) if local else uc.seed_files(args.reader, seed_dir)
        files = [p.relative_to(seed_dir) for p in seeds]
        originals = {f: (seed_dir / f).read_bytes() for f in files}
        deadline = time.monotonic() + args.seconds
        n = 0
        while time.monotonic() < deadline:
            target = rng.choice(files)
            ops = uc.random_ops(rng)
            data = uc.apply_mutations(originals[target], ops)
            d = tmp / f"in{n}"
            shutil.copytree(seed_dir, d)
            (d / target).write_bytes(data)
            print(json.dumps({"start": n, "file": str(target), "ops": repr(ops)}), flush=True)
            res = photo_run_one(d) if local else uc.run_one(args.reader, d)
            if res["outcome"] in ("typed", "bad_records", "accepted", "oserror"):
                if res["seconds"] > args.max_seconds:
                    res["outcome"] = "slow"
                elif res["peak_mb"] > args.max_peak_mb:
                    res["outcome"] = "memory"
            res.update(n=n, file=str(target), ops=repr(ops))
            if res["outcome"] not in FAILURES:
                shutil.rmtree(d, ignore_errors=True)
                res.pop("message", None)
            else:
                res["dir"] = str(d)
            print(json.dumps(res, default=str), flush=True)
            n += 1
    finally:
        # failing inputs are copied out by the parent before this folder goes
        print(json.dumps({"done": True, "tmp": str(tmp)}), flush=True)


def campaign(reader, seconds, args):
    """Run workers for ``reader`` until ``seconds`` are spent; returns the counts and failures."""
    counts = {k: 0 for k in ("typed", "bad_records", "accepted", "oserror", *FAILURES)}
    failures = []
    out = Path(args.out)
    start = time.monotonic()
    seed = args.seed
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    while True:
        left = seconds - (time.monotonic() - start)
        if left < 5:
            break
        cmd = [sys.executable, __file__, "--worker", "--reader", reader, "--seconds", str(left), "--seed", str(seed),
               "--headroom-mb", str(args.headroom_mb), "--max-seconds", str(args.max_seconds),
               "--max-peak-mb", str(args.max_peak_mb)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        last, tmp, done = None, None, False
        try:
            for line in proc.stdout:
                rec = json.loads(line)
                if "start" in rec:
                    last = rec
                elif rec.get("done"):
                    tmp, done = rec["tmp"], True
                else:
                    last = None
                    counts[rec["outcome"]] += 1
                    if rec["outcome"] in FAILURES:
                        dest = out / reader / f"{seed}_{rec['n']}"
                        shutil.copytree(rec["dir"], dest, dirs_exist_ok=True)
                        rec["saved"] = str(dest)
                        (dest / "failure.json").write_text(json.dumps(rec, indent=1, default=str))
                        failures.append(rec)
            proc.wait(timeout=left + 120)
        except subprocess.TimeoutExpired:
            proc.kill()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:  # the worker died on `last` (signal, memory limit, hang)
            counts["crash"] += 1
            failures.append({"outcome": "crash", "rc": proc.returncode, "input": last})
        seed += 1000
        if done:
            break
    return counts, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--seconds", type=float, default=60.0, help="per reader")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--headroom-mb", type=int, default=1536)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="per input")
    ap.add_argument("--max-peak-mb", type=float, default=512.0, help="peak RSS growth per input")
    ap.add_argument("--out", default="runs/fuzz", help="where failing inputs are saved")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reader", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    import untrusted_cases as uc

    readers = args.readers.split(",") if args.readers else list(uc.READERS) + list(LOCAL_READERS)
    table = {}
    print(f"{'reader':<10} {'seconds':>7} {'inputs':>7} {'typed':>7} {'bad rec':>7} {'accepted':>8} "
          f"{'OSError':>7} {'failures':>8}")
    for r in readers:
        t0 = time.monotonic()
        counts, failures = campaign(r, args.seconds, args)
        n = sum(counts.values())
        nf = sum(counts[k] for k in FAILURES)
        table[r] = {"seconds": round(time.monotonic() - t0, 1), "inputs": n, **counts, "failures": failures}
        print(f"{r:<10} {table[r]['seconds']:>7} {n:>7} {counts['typed']:>7} {counts['bad_records']:>7} "
              f"{counts['accepted']:>8} {counts['oserror']:>7} {nf:>8}", flush=True)
        for f in failures[:5]:
            print("   ", json.dumps(f, default=str)[:500])
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1, default=str))
    return 1 if any(sum(v[k] for k in FAILURES) for v in table.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
