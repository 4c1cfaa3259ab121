"""Real faces: train on CelebA identity folders, select on held-out identities, test on LFW.

One run = one loss, one seed, one process; results land in ``--output/<run name>/``
(``results.json``, ``model.keras``, ``history.json``, ``head_state.npz``). Re-running the same
command resumes after the last finished epoch (``keras.callbacks.BackupAndRestore``: weights,
optimizer, KappaFace state) and skips a finished run.

Data (read from ``--data-dir``, default ``$KFM_DATA_DIR`` or ``../shared/data``):

* ``--train-set head`` (default): ``celeba_identities/color_arcface112`` +
  ``gray_arcface112`` (ArcFace-aligned 112x112, ~29 images per identity);
* ``--train-set longtail``: the head plus ``celeba_align_10k/images`` (5,429 identities, most
  with 1-2 images; 89x109 cropped to ArcFace geometry), merged by CelebA identity number
  with duplicate files kept once;
* ``--data ROOT`` (repeatable) replaces both with your own identity-folder trees.

The 156 LFW-overlap candidates (``celeba_identities/lfw_overlap_candidates.tsv``, ``--exclude``)
are dropped from training. ``--holdout`` colour identities with at least 20 images are held out
of training (the same ones for every train set and seed): settings are selected on 10-fold
verification pairs built from them (``val_*`` in the results), never on LFW. LFW View 2
(6,000 pairs, centre crop with ArcFace geometry, flip-sum embeddings) is reported at the end,
plus the ArcFace paper's angle statistics (Table 2: W-EC, W-Inter, Intra, Inter) on the
training set.

    python examples/celeba_lfw.py --loss arcface                   # one run
    python examples/celeba_lfw.py --loss kappaface:momentum_encoder --seed 1
    python examples/celeba_lfw.py --loss softmax --train-set longtail --epochs 6

A loss spec is ``name[:estimator][:key=value ...]`` (e.g. ``kappaface:memory_buffer:margin=0.5``).
"""

import argparse
import ast
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA_DIR = os.environ.get("KFM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
AUGMENTATIONS = ("none", "flip", "mild", "strong")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder holding lfw/, celeba_identities/, celeba_align_10k/")
    p.add_argument("--train-set", choices=("head", "longtail"), default="head")
    p.add_argument("--data", action="append", default=None, help="identity-folder root(s) to train on instead of --train-set")
    p.add_argument("--exclude", default=None, help="identity list to drop (default: celeba_identities/lfw_overlap_candidates.tsv; 'none' to keep all)")
    p.add_argument("--holdout", type=int, default=50, help="colour identities (>= 20 images) held out for selection pairs")
    p.add_argument("--holdout-pairs", type=int, default=3000)
    p.add_argument("--loss", default="arcface", help="registry name, with optional :estimator and :key=value")
    p.add_argument("--backbone", choices=("iresnet", "mobilefacenet"), default="mobilefacenet")
    p.add_argument("--blocks", type=int, nargs=4, default=[1, 1, 1, 1], help="blocks per stage")
    p.add_argument("--widths", type=int, nargs=4, default=[32, 64, 128, 256], help="IResNet stage widths")
    p.add_argument("--width-multiplier", type=float, default=0.5, help="MobileFaceNet width")
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--augment", choices=AUGMENTATIONS, default="mild")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear lr warm-up, then cosine decay to 0")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--scale", type=float, default=32.0, help="logit scale s for every head that has one")
    p.add_argument("--margin", type=float, default=None, help="margin override for every margin head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lfw-align", choices=("center", "mtcnn"), nargs="+", default=["center"])
    p.add_argument("--output", default="runs/real_faces")
    p.add_argument("--name", default=None, help="run folder name (default: derived from the settings)")
    return p.parse_args(argv)


def parse_loss_spec(spec):
    """`name[:estimator][:key=value ...]` -> (name, layer overrides)."""
    name, *parts = spec.split(":")
    overrides = {}
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            try:
                overrides[key] = ast.literal_eval(value)  # numbers, True/False, tuples
            except (ValueError, SyntaxError):
                overrides[key] = value  # a plain string, e.g. a head name
        else:
            overrides["estimator"] = part
    return name, overrides


def run_name(args):
    if args.name:
        return args.name
    keys = ("train_set", "data", "loss", "backbone", "blocks", "widths", "width_multiplier", "embedding_dim",
            "image_size", "augment", "epochs", "batch_size", "lr", "warmup_epochs", "weight_decay", "scale",
            "margin", "dropout", "holdout")
    digest = hashlib.sha1(json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:6]
    return f"{args.train_set}_{args.loss.replace(':', '-').replace('=', '')}_s{args.seed}_{digest}"


def training_roots(args):
    base = Path(args.data_dir)
    if args.data:
        return [Path(r) for r in args.data]
    roots = [base / "celeba_identities" / "color_arcface112", base / "celeba_identities" / "gray_arcface112"]
    if args.train_set == "longtail":
        roots.append(base / "celeba_align_10k" / "images")
    return roots


def holdout_identities(args):
    """`--holdout` colour identities with >= 20 images, fixed by a seed independent of `--seed`
    (`keras_facemargin.inference.calibrate.heldout_identities`: the identities the thresholds use)."""
    from keras_facemargin.inference.calibrate import heldout_identities

    root = Path(args.data_dir) / "celeba_identities" / "color_arcface112"
    if args.holdout <= 0 or not root.is_dir():
        return []
    return heldout_identities(args.data_dir, count=args.holdout, exclude=exclusions(args))


def exclusions(args):
    from keras_facemargin.data import read_identity_list

    if args.exclude == "none":
        return []
    path = Path(args.exclude) if args.exclude else (
        Path(args.data_dir) / "celeba_identities" / "lfw_overlap_candidates.tsv")
    return read_identity_list(path)


def split_holdout(data, held):
    """Rows of `data` (an identity-folder load) to train on and to hold out.

    Returns:
        ``(train_rows, y, names, hold_rows)``: training row indices, their int32 labels renumbered
        ``0..len(names)-1`` over the identities not in `held`, those identity names, and the rows of
        the `held` identities (labels of ``data.labels[hold_rows]`` keep the full label space).
    """
    import numpy as np

    keep = ~np.isin(np.asarray(data.class_names)[data.labels], list(held))
    names = [n for n in data.class_names if n not in set(held)]
    remap = {n: i for i, n in enumerate(names)}
    train_rows = np.flatnonzero(keep)
    y = np.asarray([remap[data.class_names[c]] for c in data.labels[train_rows]], np.int32)
    return train_rows, y, names, np.flatnonzero(~keep)


def holdout_pairs(images, labels, num_pairs, seed=0):
    """Balanced, disjoint-fold verification pairs from held-out identities (10 folds)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    a, b, same = [], [], []
    for k in range(num_pairs):
        if k % 2 == 0:
            c = rng.choice(classes)
            i, j = rng.choice(by_class[c], size=2, replace=False)
        else:
            c1, c2 = rng.choice(classes, size=2, replace=False)
            i, j = rng.choice(by_class[c1]), rng.choice(by_class[c2])
        a.append(i)
        b.append(j)
        same.append(k % 2 == 0)
    return np.asarray(a), np.asarray(b), np.asarray(same)


def build_backbone(args):
    import keras_facemargin as kfm

    if args.backbone == "mobilefacenet":
        return kfm.backbones.MobileFaceNet(image_size=args.image_size, embedding_dim=args.embedding_dim,
                                           width_multiplier=args.width_multiplier, blocks=tuple(args.blocks),
                                           dropout=args.dropout)
    return kfm.backbones.IResNet(depth=18, image_size=args.image_size, embedding_dim=args.embedding_dim,
                                 stage_blocks=tuple(args.blocks), stage_filters=tuple(args.widths),
                                 dropout=args.dropout)


def augmentation(args):
    from keras_facemargin.data import FaceAugmentation

    if args.augment in ("none", "flip"):
        return None
    if args.augment == "mild":
        return FaceAugmentation()
    return FaceAugmentation(crop_scale=(0.7, 1.0), brightness=0.25, contrast=0.3, saturation=0.3,
                            grayscale=0.2, blur=0.2)


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    import keras_facemargin as kfm
    from keras_facemargin.data import load_identity_folders
    from keras_facemargin.evaluation.angles import angle_statistics
    from keras_facemargin.evaluation.verification import embed_images, kfold_verification, pair_scores

    out = Path(args.output) / run_name(args)
    if (out / "results.json").is_file():
        print(f"{out}/results.json exists: run finished.")
        print((out / "results.json").read_text())
        return json.loads((out / "results.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2))
    lfw = Path(args.data_dir) / "lfw"
    roots = training_roots(args)
    for r in roots:
        if not r.is_dir():
            sys.exit(f"Training folder not found: {r} (set --data-dir or KFM_DATA_DIR, or pass --data).")

    held = holdout_identities(args)
    data = load_identity_folders(roots, image_size=args.image_size, exclude=exclusions(args))
    print(data.summary())
    train_rows, y, names, hold_rows = split_holdout(data, held)
    x = data.images[train_rows]
    counts = np.bincount(y, minlength=len(names))
    print(f"training: {len(y)} images, {len(names)} identities; held out for selection: {len(held)} identities, "
          f"{len(hold_rows)} images")
    (out / "data.json").write_text(json.dumps({
        "roots": [str(r) for r in roots], "train_images": int(len(y)), "train_identities": len(names),
        "holdout_identities": held, "duplicates_across_roots": len(data.duplicates),
        "excluded_identities": sorted(data.excluded), "unreadable": data.unreadable,
        "single_image_identities": int((counts == 1).sum())}, indent=1))

    keras.utils.set_random_seed(args.seed)
    steps = len(y) // args.batch_size
    dataset = kfm.data.make_training_dataset(x, y, batch_size=args.batch_size, seed=args.seed,
                                             augment=augmentation(args), augment_flip=args.augment != "none")
    name, overrides = parse_loss_spec(args.loss)
    head = kfm.layers.build_head(name, len(names), class_counts=counts, num_samples=len(y),
                                 run_options={"scale": args.scale, "margin": args.margin}, **overrides)
    model = kfm.FaceRecognizer(build_backbone(args), head)
    model(next(iter(dataset))[0], training=False)  # built before BackupAndRestore restores into it
    warm = int(round(args.warmup_epochs * steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warm else args.lr, decay_steps=max(1, steps * args.epochs - warm),
        warmup_target=args.lr if warm else None, warmup_steps=warm)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=args.weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = kfm.callbacks.head_callbacks(model) + [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    t0 = time.time()
    model.fit(dataset, epochs=args.epochs, callbacks=callbacks, verbose=2, shuffle=False)
    train_seconds = time.time() - t0
    model.save(out / "model.keras")
    embedder = model.embedder

    result = {"run": out.name, "loss": args.loss, "seed": args.seed, "train_set": args.train_set,
              "train_images": int(len(y)), "train_identities": len(names),
              "train_seconds_this_session": round(train_seconds, 1), "config": vars(args),
              "head_config": {k: v for k, v in head.get_config().items()
                              if k in ("scale", "margin", "m1", "m2", "m3", "estimator", "target")}}
    if len(hold_rows):
        hy = data.labels[hold_rows]
        ia, ib, same = holdout_pairs(data.images[hold_rows], hy, args.holdout_pairs)
        emb = embed_images(embedder, data.images[hold_rows])
        r = kfold_verification(pair_scores(emb[ia], emb[ib]), same)
        result.update(val_accuracy_mean=r.accuracy_mean, val_accuracy_std=r.accuracy_std,
                      val_tar_at_far={str(k): v for k, v in r.tar_at_far.items()})
        print(f"held-out identities: {100 * r.accuracy_mean:.2f} +- {100 * r.accuracy_std:.2f}")
    for align in args.lfw_align:
        if not (lfw / "pairs.txt").is_file():
            print(f"LFW not found at {lfw}: skipped.")
            break
        r = kfm.evaluation.lfw_verification(embedder, lfw, image_size=args.image_size, align=align, progress=False)
        result[f"lfw_{align}"] = {"accuracy_mean": r.accuracy_mean, "accuracy_std": r.accuracy_std,
                                  "tar_at_far": {str(k): v for k, v in r.tar_at_far.items()}}
        print(f"LFW ({align}): {100 * r.accuracy_mean:.2f} +- {100 * r.accuracy_std:.2f}, "
              f"TAR@FAR=1e-3 {100 * r.tar_at_far.get(1e-3, float('nan')):.2f}")
    train_emb = embed_images(embedder, x, flip=False)
    kernel = getattr(head, "kernel", None)
    stats = angle_statistics(train_emb, y, None if kernel is None else keras.ops.convert_to_numpy(kernel))
    result["angles_deg"] = stats
    print("angle statistics (degrees):", json.dumps(stats))
    state = {"class_counts": counts}
    for attr in ("kappa", "psi"):
        if hasattr(head, attr):
            state[attr] = keras.ops.convert_to_numpy(getattr(head, attr))
    np.savez(out / "head_state.npz", **state)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
