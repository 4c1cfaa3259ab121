#!/usr/bin/env python
"""Photos/s of ``FaceVerifier.embed_many`` against ``FaceVerifier.embed`` in a loop (issue 22, part 3).

The same ``--photos`` LFW photos (the first N of ``lfw/images`` in sorted order) are embedded three ways,
with one verifier (one model load, one MTCNN detector) that is warmed up first (a few untimed calls of
both routes, so graph tracing is not timed):

* ``embed loop``: ``[verifier.embed(p) for p in photos]``: one detector call and one model call per photo;
* ``embed_many``: ``verifier.embed_many(photos, batch_size=--batch-size)``: the photos of a chunk go
  to the detector together (MTCNN batches equal-sized photos: all LFW photos are 250x250) and the crops
  to the model in batches;
* ``embed_many exact``: ``embed_many(..., batch_detection=False)``: one detector call per photo, as
  ``embed`` (its embeddings equal ``embed``'s), the crops still embedded in batches;
* ``CLI per photo`` (only with ``--cli-photos K``): ``python -m keras_facemargin embed PHOTO`` started once
  per photo, on the first K photos (TensorFlow start-up and model load every time).

The in-process routes must agree with the loop (the minimum cosine between two embeddings of a photo is
printed; the script exits 1 below 0.9999 for ``exact``, below 0.99 for batched detection, whose MTCNN
may put a landmark one pixel off on a few photos, or when the routes fail on different photos). The
detector runs on every photo in every route, and on a CPU it is most of the time, so the ratio is
whatever batching the detector and the model buys on this machine: it is reported as measured. The header prints the load average: other work on the cores
(a training run) slows both routes, not necessarily equally.

Usage::

    python benchmarks/embed_batch.py                        # 1,000 photos, the default model
    python benchmarks/embed_batch.py --photos 20 --model mbf_dlib_distill     # quick check
    python benchmarks/embed_batch.py --photos 200 --cli-photos 3 --json embed_batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("KFM_DATA_DIR", REPO.parent / "shared" / "data")) / "lfw" / "images"


def lfw_photos(root: Path, n: int) -> list:
    """The first ``n`` LFW photos, sorted by path."""
    photos = sorted(str(p) for p in root.glob("*/*.jpg"))
    if len(photos) < n:
        raise SystemExit(f"only {len(photos)} photos under {root}, asked for {n}")
    return photos[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=1000, help="LFW photos to embed (default 1000)")
    ap.add_argument("--model", default=None, help="zoo name or .keras (default: the registry's DEFAULT_MODEL)")
    ap.add_argument("--batch-size", type=int, default=32, help="embed_many batch size (default 32)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"LFW images folder (default {DEFAULT_DATA})")
    ap.add_argument("--cli-photos", type=int, default=0, help="also time the CLI started once per photo on K photos")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.photos <= 0 or args.batch_size <= 0 or args.cli_photos < 0:
        ap.error("--photos and --batch-size must be positive, --cli-photos >= 0")
    if not args.data.is_dir():
        raise SystemExit(f"LFW images not found at {args.data} (--data, or set KFM_DATA_DIR)")
    photos = lfw_photos(args.data, args.photos)

    import keras_facemargin as kfm
    from keras_facemargin.errors import FaceVerifierError

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"embed_batch: {len(photos)} LFW photos, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f} before the run")
    t0 = time.perf_counter()
    verifier = kfm.FaceVerifier(args.model)
    print(f"model {verifier.model_name} ({verifier.embedding_dim}-d, {verifier.image_size[0]}x"
          f"{verifier.image_size[1]}) loaded in {time.perf_counter() - t0:.1f} s")
    warm = photos[:min(len(photos), args.batch_size)]  # untimed: traces the detector and model shapes
    verifier.embed_many(warm, batch_size=args.batch_size, progress=False)
    for p in warm[:2]:
        try:
            verifier.embed(p)
        except FaceVerifierError:
            pass

    t0 = time.perf_counter()
    loop = {}
    for p in photos:
        try:
            loop[p] = verifier.embed(p)[0]
        except FaceVerifierError:
            loop[p] = None
    t_loop = time.perf_counter() - t0
    rows, agree, same_failures = {"embed loop": len(photos) / t_loop}, {}, True
    for name, batch_detection in (("embed_many", True), ("embed_many exact", False)):
        t0 = time.perf_counter()
        many = verifier.embed_many(photos, batch_size=args.batch_size, progress=False,
                                   batch_detection=batch_detection)
        rows[name] = len(photos) / (time.perf_counter() - t0)
        both = [(loop[it.source], it.embedding) for it in many if it.ok and loop[it.source] is not None]
        agree[name] = min((float(a @ b) for a, b in both), default=float("nan"))
        same_failures &= [it.source for it in many if not it.ok] == [p for p in photos if loop[p] is None]
    if args.cli_photos:
        with tempfile.TemporaryDirectory() as tmp:
            cli = photos[:args.cli_photos]
            t0 = time.perf_counter()
            for i, p in enumerate(cli):
                cmd = [sys.executable, "-m", "keras_facemargin", "embed", p, "--output", f"{tmp}/{i}.npz",
                       "--no-progress"] + (["--model", args.model] if args.model else [])
                subprocess.run(cmd, check=False, capture_output=True, cwd=REPO)
            rows["CLI per photo"] = len(cli) / (time.perf_counter() - t0)

    print(f"\n{'route':<18}{'photos/s':>10}{'x loop':>9}")
    for name, rate in rows.items():
        print(f"{name:<18}{rate:>10.2f}{rate / rows['embed loop']:>9.2f}")
    ratio = rows["embed_many"] / rows["embed loop"]
    print(f"\nembed_many / embed loop: {ratio:.2f}x (goal >= 5x; the detector runs on every photo in both routes)")
    print(f"embed_many exact / embed loop: {rows['embed_many exact'] / rows['embed loop']:.2f}x")
    print(f"embedded {len(many.sources)} of {len(photos)}, failed {len(many.errors)} "
          f"({'the same photos' if same_failures else 'NOT the same photos'} as the loop); min cosine to "
          f"embed: embed_many {agree['embed_many']:.6f}, exact {agree['embed_many exact']:.6f}")
    result = {"photos": len(photos), "batch_size": args.batch_size, "model": verifier.model_name,
              "photos_per_s": rows, "ratio_embed_many_over_loop": ratio, "min_cosine": agree,
              "same_failures": same_failures, "load_average_before": load, "cpus": os.cpu_count()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    good = same_failures and not agree["embed_many exact"] < 0.9999 and not agree["embed_many"] < 0.99
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
