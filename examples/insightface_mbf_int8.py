"""A trained insightface MobileFaceNet, converted to Keras and TFLite int8: parity on real LFW faces.

No insightface release weights (``w600k_mbf``) are on this machine, so this script makes a trained
one the way arcface_torch does, then takes it through the package's conversion and export routes:

1. **Train in PyTorch** the insightface MobileFaceNet of ``tests/test_insightface_parity.py``
   (written from ``arcface_torch/backbones/mobilefacenet.py``; default: ``get_mbf``, i.e.
   ``w600k_mbf``'s architecture: scale 2, blocks 1-4-6-2, 512-d, 112x112 RGB, ``(x - 127.5) / 127.5``)
   with an ArcFace head (``cos(theta + m)``, arcface_torch's ``CombinedMarginLoss(s, 1, m, 0)``;
   class centres ``N(0, 0.01)`` as in its ``PartialFC``), SGD momentum 0.9, weight decay 5e-4,
   linear warm-up then arcface_torch's polynomial decay (power 2), random horizontal flips. Data:
   the CelebA identity folders of ``examples/celeba_lfw.py`` (head set, LFW-overlap candidates and
   the 50 held-out selection identities removed). A ``checkpoint_gpu_0.pt`` in arcface_torch's
   format (``state_dict_backbone``, ``state_dict_softmax_fc``, optimizer, scheduler, ``global_step``)
   is written every ``--checkpoint-every`` steps; re-running the command resumes from it, at the
   same step of the same epoch order. The finished backbone is saved as arcface_torch saves it
   (``model.pt``, a state dict) and exported to ONNX (TorchScript, opset 11, as ``torch2onnx.py``).
2. **Convert** ``model.pt`` with ``tools/convert_insightface.py`` (ONNX reference, LFW crops) to
   ``converted.keras``; the converter records arcface_torch's ``/ 127.5`` normalisation in it.
3. **Export** the converted model to TFLite float16 and full int8 (``keras_facemargin.export``, an
   ``input_normalization`` layer in front, 200 *training* images as calibration data: never LFW).
4. **Measure** LFW View 2 (6,000 pairs, 10 folds, flip-sum, centre crop and MTCNN 5-point
   alignment) through PyTorch itself, the converted Keras model and both TFLite files, plus the
   cosine of each runtime's embeddings to PyTorch's on the 7,701 LFW images, and the held-out
   identities' pairs. Everything lands in ``--output/results.json``.

    python examples/insightface_mbf_int8.py                     # train (resumes), convert, export, measure
    python examples/insightface_mbf_int8.py --max-minutes 60    # stop training after an hour; re-run resumes
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

DEFAULT_DATA_DIR = os.environ.get("KFM_DATA_DIR", str(REPO.parent / "shared" / "data"))
VARIANTS = {  # name: MobileFaceNet kwargs of the insightface definition (arcface_torch get_model names)
    "mbf": {"num_features": 512, "blocks": (1, 4, 6, 2), "scale": 2},
    "mbf_large": {"num_features": 512, "blocks": (2, 8, 12, 4), "scale": 4},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder holding lfw/ and celeba_identities/")
    p.add_argument("--output", default="runs/insightface_mbf")
    p.add_argument("--network", choices=sorted(VARIANTS), default="mbf")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--scale", type=float, default=32.0, help="ArcFace s (arcface_torch: 64; 32 as the package's real-face recipe)")
    p.add_argument("--margin", type=float, default=0.5, help="ArcFace m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoint_gpu_0.pt saves")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training (checkpointed) after this long")
    p.add_argument("--max-steps", type=int, default=None, help="train this many steps in all (smoke runs)")
    p.add_argument("--lfw-align", choices=("center", "mtcnn"), nargs="+", default=["mtcnn", "center"],
                   help="LFW crops: MTCNN 5-point alignment (FaceVerifier's) and/or the fixed centre crop")
    p.add_argument("--calibration-images", type=int, default=200)
    p.add_argument("--holdout", type=int, default=50, help="as examples/celeba_lfw.py (the same identities)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def load_data(args):
    """Training and held-out images of the celeba_lfw head set at 112x112 (uint8 RGB)."""
    import numpy as np

    import celeba_lfw
    from keras_facemargin.data import load_identity_folders

    ns = celeba_lfw.parse_args(["--data-dir", args.data_dir, "--holdout", str(args.holdout)])
    roots = celeba_lfw.training_roots(ns)
    for r in roots:
        if not r.is_dir():
            sys.exit(f"Training folder not found: {r} (set --data-dir or KFM_DATA_DIR).")
    held = celeba_lfw.holdout_identities(ns)
    data = load_identity_folders(roots, image_size=112, exclude=celeba_lfw.exclusions(ns))
    train_rows, y, names, hold = celeba_lfw.split_holdout(data, held)
    return {"x": data.images[train_rows], "y": y.astype(np.int64), "num_classes": len(names),
            "hold_x": data.images[hold], "hold_y": data.labels[hold], "summary": data.summary()}


# ----------------------------------------------------------------------------- PyTorch side
def to_tensor(batch):
    """uint8 NHWC RGB -> float32 NCHW ``(x - 127.5) / 127.5`` (arcface_torch's transform)."""
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5).contiguous()


def build_torch_model(args):
    import test_insightface_parity as ref

    return ref.MobileFaceNet(**VARIANTS[args.network])


class ArcFaceHead:
    """arcface_torch's ArcFace logits: ``s * cos(theta + m)`` for the target class, ``s * cos`` else."""

    def __init__(self, num_classes, dim, scale, margin, generator):
        import torch

        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, dim), generator=generator))
        self.scale, self.margin = scale, margin

    def loss(self, embeddings, labels):
        import torch
        import torch.nn.functional as F

        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + self.margin)
        logits = cos.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)


def lr_at(step, args, steps_per_epoch):
    """Linear warm-up, then arcface_torch's PolyScheduler decay ``(1 - t)^2``."""
    total, warm = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)
    if step < warm:
        return args.lr * (step + 1) / warm
    return args.lr * (1 - (step - warm) / max(1, total - warm)) ** 2


def _save_atomic(obj, path):
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(args, data, out):
    """Train (or resume) in PyTorch; returns the trained backbone (eval mode) and the training log."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build_torch_model(args).to(memory_format=torch.channels_last)
    head = ArcFaceHead(data["num_classes"], VARIANTS[args.network]["num_features"], args.scale, args.margin, gen)
    opt = torch.optim.SGD([{"params": model.parameters()}, {"params": [head.weight]}], lr=args.lr,
                          momentum=0.9, weight_decay=args.weight_decay)
    x, y = data["x"], data["y"]
    steps_per_epoch = len(y) // args.batch_size
    total = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    ckpt, log_path = out / "checkpoint_gpu_0.pt", out / "train_log.jsonl"
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict_backbone"])
        head.weight.data.copy_(state["state_dict_softmax_fc"]["weight"])
        opt.load_state_dict(state["state_optimizer"])
        step = int(state["global_step"])
        print(f"resumed from {ckpt} at step {step}/{total}", flush=True)

    def save():
        _save_atomic({"epoch": step // steps_per_epoch, "global_step": step,
                      "state_dict_backbone": model.state_dict(),
                      "state_dict_softmax_fc": {"weight": head.weight.detach().clone()},
                      "state_optimizer": opt.state_dict(),
                      "state_lr_scheduler": {"last_epoch": step, "base_lrs": [args.lr, args.lr]}}, ckpt)

    t0, seen, running = time.time(), 0, []
    model.train()
    while step < total:
        epoch, k = divmod(step, steps_per_epoch)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(y))  # the same order on resume
        idx = order[k * args.batch_size:(k + 1) * args.batch_size]
        batch = x[idx]
        flip = np.random.default_rng([args.seed, epoch, k]).random(len(idx)) < 0.5
        batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args, steps_per_epoch)
        inputs = to_tensor(np.ascontiguousarray(batch)).to(memory_format=torch.channels_last)
        loss = head.loss(model(inputs), torch.from_numpy(y[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            sys.exit(f"loss is {loss.item()} at step {step}: stopped (last checkpoint kept: {ckpt}).")
        step += 1
        seen += len(idx)
        running.append(loss.item())
        if step % args.checkpoint_every == 0 or step == total:
            save()
            rec = {"step": step, "epoch": step / steps_per_epoch, "loss": float(np.mean(running)),
                   "lr": opt.param_groups[0]["lr"], "img_per_s": seen / (time.time() - t0)}
            running = []
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            if args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes and step < total:
                print(f"--max-minutes {args.max_minutes} reached at step {step}/{total}: checkpointed; "
                      "re-run to resume.", flush=True)
                return None
    return model.eval()


def export_torch(model, out):
    """``model.pt`` (state dict, as arcface_torch saves it) and ``model.onnx`` (TorchScript, opset 11)."""
    import torch

    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.save(model.state_dict(), out / "model.pt")
    dummy = torch.zeros(1, 3, 112, 112)
    torch.onnx.export(model, (dummy,), str(out / "model.onnx"), dynamo=False, opset_version=11,
                      input_names=["input.1"], output_names=["embedding"], dynamic_axes={"input.1": {0: "batch"}})


# ----------------------------------------------------------------------------- measurement
def lfw_data(lfw, aligns):
    from keras_facemargin.data.lfw import load_lfw_images, load_lfw_pairs

    pairs = load_lfw_pairs(lfw)
    paths, ia, ib = pairs.unique_paths()
    return {align: load_lfw_images(paths, image_size=112, align=align, progress=False)
            for align in aligns}, pairs, ia, ib


def verification(raw, raw_flipped, ia, ib, same, folds=None):
    """10-fold verification of flip-summed embeddings (insightface's flip test)."""
    from keras_facemargin.evaluation.verification import kfold_verification, pair_scores

    e = raw + raw_flipped  # pair_scores normalises
    r = kfold_verification(pair_scores(e[ia], e[ib]), same, **({} if folds is None else {"folds": folds}))
    return {"accuracy_mean": round(100 * r.accuracy_mean, 2), "accuracy_std": round(100 * r.accuracy_std, 2),
            "tar_at_far_1e-3": round(100 * r.tar_at_far.get(1e-3, float("nan")), 2)}


def cosines(a, b):
    from keras_facemargin.evaluation.verification import pair_scores

    c = pair_scores(a, b)
    return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean())}


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2))
    lfw = Path(args.data_dir) / "lfw"
    if not (lfw / "pairs.txt").is_file():
        sys.exit(f"LFW not found: {lfw}/pairs.txt (set --data-dir or KFM_DATA_DIR).")
    data = load_data(args)
    print(data["summary"], f"\ntraining: {len(data['y'])} images, {data['num_classes']} identities", flush=True)

    import numpy as np
    import torch

    if not (out / "model.pt").is_file():
        model = train(args, data, out)
        if model is None:
            return None
        export_torch(model, out)
    model = build_torch_model(args)
    model.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    torch.set_num_threads(args.threads)

    converted = out / "converted.keras"
    if not converted.is_file():
        cmd = [sys.executable, str(REPO / "tools" / "convert_insightface.py"), str(out / "model.pt"),
               "--output", str(converted), "--reference-onnx", str(out / "model.onnx"),
               "--data-dir", args.data_dir]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    import keras

    import keras_facemargin  # noqa: F401
    from keras_facemargin.export import TFLiteEmbedder, export_tflite
    from keras_facemargin.pretrained.loader import read_normalization, with_package_normalization

    norm = read_normalization(converted)
    embedder = with_package_normalization(keras.saving.load_model(converted, compile=False), norm)

    def torch_fn(images):
        with torch.inference_mode():
            return np.concatenate([model(to_tensor(images[i:i + 128])).numpy() for i in range(0, len(images), 128)])

    def runner_fn(fn):
        from keras_facemargin.data.pipeline import normalize_images

        return lambda images: np.concatenate([np.asarray(fn(normalize_images(images[i:i + 64])))
                                              for i in range(0, len(images), 64)])

    runtimes = {"pytorch": torch_fn, "keras": runner_fn(lambda b: embedder.predict_on_batch(b))}
    rng = np.random.default_rng(0)
    calib = data["x"][rng.choice(len(data["x"]), args.calibration_images, replace=False)]
    for quant in ("float16", "int8"):
        path = out / f"converted_{quant}.tflite"
        if not path.is_file():
            export_tflite(embedder, path, quant, calib if quant == "int8" else None)
        runtimes[f"tflite_{quant}"] = runner_fn(TFLiteEmbedder(path))

    images, pairs, ia, ib = lfw_data(lfw, args.lfw_align)
    result = {"config": vars(args), "normalization": norm, "train_images": int(len(data["y"])),
              "train_identities": data["num_classes"],
              "train_log": [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][-1:],
              "tflite_bytes": {q: (out / f"converted_{q}.tflite").stat().st_size for q in ("float16", "int8")},
              "runtimes": {}}
    import celeba_lfw

    images["heldout"] = data["hold_x"]
    ha, hb, hsame = celeba_lfw.holdout_pairs(data["hold_x"], data["hold_y"], 3000)
    protocol = {"center": (ia, ib, pairs.is_same, pairs.fold), "mtcnn": (ia, ib, pairs.is_same, pairs.fold),
                "heldout": (ha, hb, hsame, None)}
    ref = {}
    for name, fn in runtimes.items():
        t0 = time.time()
        rec = {}
        for key, imgs in images.items():
            cached = out / f"embeddings_{name}_{key}.npz"  # a re-run continues after the last finished set
            if cached.is_file():
                with np.load(cached) as z:
                    raw, raw_flipped = z["raw"], z["flipped"]
            else:
                raw, raw_flipped = fn(imgs), fn(np.ascontiguousarray(imgs[:, :, ::-1]))
                np.savez(cached.with_suffix(".tmp.npz"), raw=raw, flipped=raw_flipped)
                os.replace(cached.with_suffix(".tmp.npz"), cached)
            if name == "pytorch":
                ref[key] = (raw, raw_flipped)
            else:
                rec[f"cosine_to_pytorch_{key}"] = cosines(np.concatenate([raw, raw_flipped]),
                                                          np.concatenate(ref[key]))
            rec["lfw_" + key if key != "heldout" else key] = verification(raw, raw_flipped, *protocol[key])
        rec["seconds"] = round(time.time() - t0, 1)
        result["runtimes"][name] = rec
        print(name, json.dumps(rec), flush=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
