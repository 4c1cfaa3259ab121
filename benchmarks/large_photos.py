"""Peak memory of FaceVerifier on large photos and on a crowd, each case in a fresh subprocess.

Photos are built from a real LFW face (``lfw/images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg``)
upscaled into a large canvas of noise, so detection must really find the face; the box found on
the big photo is compared with the box found on the small original, scaled (IoU printed).

Cases (each: ``FaceVerifier(...).verify(big, small_original)`` in a new process; peak RSS from
``VmHWM``, :func:`keras_facemargin.utils.memory.peak_rss_mb`; ``ru_maxrss`` would include the parent's memory):

* ``baseline``: the small original against itself (the cost of TensorFlow, the model, MTCNN);
* ``photo_48mpx``: an 8000x6000 JPEG (face upscaled 8x);
* ``scan_108mpx``: a 12000x9000 JPEG (face upscaled 12x);
* ``crowd``: ``--crowd N`` LFW photos tiled in a grid (``FaceVerifier.detect_all``: every face);
* ``*_unbounded``: the same with the limits off (``max_side`` and ``max_candidates`` huge), under
  an address-space limit of ``--unbounded-limit-gb`` so that the machine survives it.

Example::

    nice -n 5 python benchmarks/large_photos.py                   # default model of the registry
    nice -n 5 python benchmarks/large_photos.py --model tiny --crowd 400 --json large.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACE = Path("lfw/images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg")


def data_dir():
    return Path(os.environ.get("KFM_DATA_DIR", "/work/shared/data"))


def build_photo(src_rgb, size_hw, scale, offset_xy, seed=0):
    """``src_rgb`` upscaled by ``scale`` (linear) at ``offset_xy`` in a noise canvas of ``size_hw``."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size_hw
    small = rng.integers(60, 200, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    canvas = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    face = cv2.resize(src_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    x, y = offset_xy
    canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
    return canvas


def build_crowd(paths, n, side=250):
    """``n`` LFW photos tiled in a square grid (one face each)."""
    import math

    import numpy as np

    from keras_facemargin.utils.images import read_photo

    k = math.ceil(math.sqrt(n))
    canvas = np.full((k * side, k * side, 3), 128, np.uint8)
    for i, p in enumerate(paths[:n]):
        rgb, _ = read_photo(p)
        r, c = divmod(i, k)
        canvas[r * side:(r + 1) * side, c * side:(c + 1) * side] = rgb[:side, :side]
    return canvas


def write_jpeg(path, rgb, quality=92):
    import cv2

    ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, path
    return path


def make_verifier(model, unbounded):
    from keras_facemargin.data.align import MTCNNDetector
    from keras_facemargin.inference.verifier import FaceVerifier

    det = MTCNNDetector(max_side=10**6, max_candidates=10**9) if unbounded else MTCNNDetector()
    if model == "tiny":
        import keras

        keras.utils.set_random_seed(0)
        emb = keras.Sequential([keras.Input((112, 112, 3)), keras.layers.Conv2D(8, 5, strides=4),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16),
                                keras.layers.UnitNormalization()])
        return FaceVerifier(emb, threshold=0.5, detector=det)
    return FaceVerifier(model, detector=det)


def worker(args):
    """In the subprocess: run one case, print one JSON line."""
    if args.limit_gb:
        cap = int(args.limit_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from keras_facemargin.utils.memory import peak_rss_mb

    t0 = time.perf_counter()
    out = {"case": args.case}
    try:
        verifier = make_verifier(args.model, args.unbounded)
        if args.case == "crowd":
            faces = verifier.detect_all(args.photo)
            out.update(num_faces=len(faces.faces))
        else:
            res = verifier.verify(args.photo, args.small)
            fa = res.faces[0]
            out.update(score=float(res.score), box=None if fa is None or fa.box is None else list(fa.box))
        out["status"] = "ok"
    except BaseException as e:  # noqa: BLE001  (reported: MemoryError and TF resource errors included)
        out.update(status="failed", error=f"{type(e).__name__}: {str(e)[:200]}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("RESULT " + json.dumps(out), flush=True)


def run_case(case, photo, small, model, unbounded=False, limit_gb=None):
    cmd = [sys.executable, __file__, "--worker", "--case", case, "--photo", str(photo), "--small", str(small),
           "--model", model] + (["--unbounded"] if unbounded else []) + \
        (["--limit-gb", str(limit_gb)] if limit_gb else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"case": case, "status": "crashed", "returncode": p.returncode, "stderr": p.stderr[-400:]}


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registry model (default: the registry's default) or 'tiny'")
    ap.add_argument("--crowd", type=int, default=400, help="faces in the crowd case (0: skip)")
    ap.add_argument("--cases", default="baseline,photo_48mpx,scan_108mpx,crowd,photo_48mpx_unbounded")
    ap.add_argument("--unbounded-limit-gb", type=float, default=8.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--photo", help=argparse.SUPPRESS)
    ap.add_argument("--small", help=argparse.SUPPRESS)
    ap.add_argument("--unbounded", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--limit-gb", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(REPO))
    from keras_facemargin.pretrained import registry
    from keras_facemargin.utils.images import read_photo

    model = args.model or registry.DEFAULT_MODEL
    src = data_dir() / FACE
    rgb, problem = read_photo(src)
    if problem:
        raise SystemExit(f"{src}: {problem}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kfm_large_") as tmp:
        tmp = Path(tmp)
        specs = {"photo_48mpx": ((6000, 8000), 8, (3100, 2200)), "scan_108mpx": ((9000, 12000), 12, (5000, 3500))}
        photos = {"baseline": src}
        for name, (hw, scale, off) in specs.items():
            if any(c.startswith(name) for c in args.cases.split(",")):
                photos[name] = write_jpeg(tmp / f"{name}.jpg", build_photo(rgb, hw, scale, off))
        if "crowd" in args.cases and args.crowd:
            paths = sorted((data_dir() / "lfw" / "images").glob("*/*_0001.jpg"))
            photos["crowd"] = write_jpeg(tmp / "crowd.jpg", build_crowd(paths, args.crowd))
        ref = run_case("baseline", src, src, model)
        for case in args.cases.split(","):
            base = case.replace("_unbounded", "")
            if case == "baseline":
                r = ref
            elif base in photos:
                r = run_case(base, photos[base], src, model, unbounded=case.endswith("_unbounded"),
                             limit_gb=args.unbounded_limit_gb if case.endswith("_unbounded") else None)
                r["case"] = case
            else:
                continue
            if base in specs and r.get("box") and ref.get("box"):
                _, scale, (ox, oy) = specs[base]
                expect = [ref["box"][0] * scale + ox, ref["box"][1] * scale + oy, ref["box"][2] * scale,
                          ref["box"][3] * scale]
                r["iou_with_scaled_small_box"] = round(iou(r["box"], expect), 3)
            if r.get("peak_rss_mb") and ref.get("peak_rss_mb"):
                r["rss_ratio_to_baseline"] = round(r["peak_rss_mb"] / ref["peak_rss_mb"], 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
