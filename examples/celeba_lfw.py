"""Train on CelebA (10k aligned images), evaluate on LFW: a real, small, comparable result.

What: the same small backbone trained once per loss (default: Softmax, ArcFace,
KappaFace with the memory buffer and with the momentum encoder), same seed,
same data order and same number of epochs; each model is then evaluated on the
LFW 6,000-pair View 2 protocol (10-fold accuracy mean +- std).

Data: `$KFM_DATA_DIR/celeba_align_10k/images` (10,000 CelebA aligned images,
5,429 identities, long-tailed: most identities have 1-2 images) for training,
and `$KFM_DATA_DIR/lfw` (deep-funneled, pairs.txt) for evaluation; identities
are disjoint. Faces are cropped to the ArcFace-like geometry (CelebA:
`CELEBA_ARCFACE_CROP_BOX`; LFW: `LFW_CENTER_CROP_BOX`) and resized to
`--image-size`.

How long: with the defaults (IResNet with 1 block per stage, widths 16-128,
48x48 input, 128-d, 12 epochs of 156 steps) a few minutes per loss on 2 CPU cores.
The scale is s=32 for every head (the papers' s=64 is for 85k classes); the
margins are each paper's unless `--margin` is given. A loss spec may carry
layer arguments: `kappaface:memory_buffer:margin=0.5`.

    python examples/celeba_lfw.py                          # all four losses
    python examples/celeba_lfw.py --losses arcface --epochs 5
    python examples/celeba_lfw.py --losses kappaface:momentum_encoder cosface

Results (a Markdown table and a JSON file) go to `--output`.
"""

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_LOSSES = ["softmax", "arcface", "kappaface:memory_buffer", "kappaface:momentum_encoder"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=os.environ.get("KFM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--losses", nargs="+", default=DEFAULT_LOSSES, help="registry names; kappaface:<estimator>")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128], help="IResNet stage widths")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--scale", type=float, default=32.0, help="logit scale s for every head that has one (papers: 64 at 85k classes)")
    p.add_argument("--margin", type=float, default=None, help="margin override for all margin heads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/celeba_lfw")
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


def train_and_evaluate(args, loss_spec, images, labels, counts):
    import keras
    import numpy as np

    import keras_facemargin as kfm
    from keras_facemargin.data.lfw import lfw_verification

    name, overrides = parse_loss_spec(loss_spec)
    keras.utils.set_random_seed(args.seed)
    dataset = kfm.data.make_training_dataset(images, labels, batch_size=args.batch_size, seed=args.seed)
    steps = len(labels) // args.batch_size
    backbone = kfm.backbones.IResNet(
        depth=18,
        image_shape=(args.image_size, args.image_size, 3),
        embedding_dim=args.embedding_dim,
        stage_blocks=(1, 1, 1, 1),
        stage_filters=tuple(args.widths),
        dropout=0.0,
    )
    head = kfm.layers.build_head(
        name,
        len(counts),
        class_counts=counts,
        num_samples=len(labels),
        run_options={"scale": args.scale, "margin": args.margin},
        **overrides,
    )
    model = kfm.FaceRecognizer(backbone, head)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps * args.epochs)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks = kfm.callbacks.head_callbacks(model)
    start = time.time()
    history = model.fit(dataset, epochs=args.epochs, callbacks=callbacks, verbose=2, shuffle=False)
    train_seconds = time.time() - start
    result = lfw_verification(model.embedder, Path(args.data) / "lfw", image_size=args.image_size, progress=False)
    return {
        "loss": loss_spec,
        "head_config": {k: v for k, v in head.get_config().items() if k in ("scale", "margin", "m1", "m2", "m3", "estimator", "target")},
        "lfw_accuracy_mean": result.accuracy_mean,
        "lfw_accuracy_std": result.accuracy_std,
        "lfw_tar_at_far": {str(k): v for k, v in result.tar_at_far.items()},
        "train_seconds": round(train_seconds, 1),
        "final_loss": float(history.history["loss"][-1]),
        "epochs": args.epochs,
        "train_images": int(len(labels)),
        "num_classes": int(len(counts)),
    }


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from keras_facemargin.data.identity_folders import load_identity_folder

    celeba = Path(args.data) / "celeba_align_10k" / "images"
    if not celeba.is_dir() or not (Path(args.data) / "lfw" / "pairs.txt").is_file():
        sys.exit(f"Data not found: expected {celeba} and {Path(args.data) / 'lfw' / 'pairs.txt'} (set --data or KFM_DATA_DIR).")
    images, labels, _, counts = load_identity_folder(celeba, image_size=args.image_size)
    print(f"CelebA: {len(labels)} images, {len(counts)} identities (images per identity: "
          f"min {counts.min()}, median {int(np.median(counts))}, max {counts.max()})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2))
    rows = []
    for spec in args.losses:
        print(f"\n=== {spec} ===", flush=True)
        rows.append(train_and_evaluate(args, spec, images, labels, counts))
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = ["| loss | LFW accuracy (%) | TAR@FAR=1e-3 (%) | train time (min) | final loss |", "|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['loss']} | {100 * r['lfw_accuracy_mean']:.2f} ± {100 * r['lfw_accuracy_std']:.2f} | "
            f"{100 * r['lfw_tar_at_far']['0.001']:.2f} | {r['train_seconds'] / 60:.1f} | {r['final_loss']:.3f} |"
        )
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
