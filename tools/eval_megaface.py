"""MegaFace Challenge 1 from precomputed features: rank-k identification (CMC) and TAR@FAR=1e-6.

Usage::

    python tools/eval_megaface.py \
        --facescrub-features fs.npy --facescrub-list facescrub_lst \
        --megaface-features mf.npy --megaface-list megaface_lst \
        [--facescrub-noises facescrub_noises.txt] [--megaface-noises megaface_noises.txt]
        [--facescrub-mode replace|remove] [--num-distractors 1000000] [--suffix _insightface.bin]

Features: a ``.npy`` (N, d) matrix in list order, or a folder of per-image MegaFace ``.bin`` files
``<folder>/<list entry><suffix>``. Lists: one image path per line; FaceScrub identity = the
parent folder name (``<identity>/<file>``), as insightface's ``facescrub_lst``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _read_list(path):
    with open(path) as f:
        return [ln.strip().split("\t")[-1] for ln in f if ln.strip() and not ln.startswith("#")]


def main(argv=None):
    ap = argparse.ArgumentParser(description="MegaFace Challenge 1 evaluation from features.")
    ap.add_argument("--facescrub-features", required=True)
    ap.add_argument("--facescrub-list", required=True)
    ap.add_argument("--megaface-features", required=True)
    ap.add_argument("--megaface-list", default=None, help="needed with --megaface-noises or .bin folders")
    ap.add_argument("--facescrub-noises", default=None)
    ap.add_argument("--megaface-noises", default=None)
    ap.add_argument("--facescrub-mode", default="replace", choices=["replace", "remove"])
    ap.add_argument("--num-distractors", type=int, default=None)
    ap.add_argument("--suffix", default="_insightface.bin", help="per-image .bin suffix in feature folders")
    ap.add_argument("--fars", default="1e-6")
    args = ap.parse_args(argv)

    import numpy as np

    from keras_facemargin.evaluation.megaface import evaluate_megaface, load_features

    try:
        fs_names = _read_list(args.facescrub_list)
        fs_ids = np.array([os.path.basename(os.path.dirname(n)) for n in fs_names])
        if any(not i for i in fs_ids):
            raise ValueError(f"{args.facescrub_list}: entries must be '<identity>/<file>' paths.")
        mf_names = _read_list(args.megaface_list) if args.megaface_list else None
        fs = load_features(args.facescrub_features, fs_names, args.suffix)
        mf = load_features(args.megaface_features, mf_names, args.suffix)
        if fs.shape[0] != len(fs_names):
            raise ValueError(f"{fs.shape[0]} FaceScrub features for {len(fs_names)} list entries.")
        if mf_names is not None and mf.shape[0] != len(mf_names):
            raise ValueError(f"{mf.shape[0]} MegaFace features for {len(mf_names)} list entries.")
        res = evaluate_megaface(fs, fs_ids, mf, fs_names, mf_names, args.facescrub_noises, args.megaface_noises,
                                facescrub_mode=args.facescrub_mode, num_distractors=args.num_distractors,
                                fars=tuple(float(v) for v in args.fars.split(",")), progress=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
