"""A native student distilled from the dlib port, with a margin head on the identity labels.

Teacher: ``keras_facemargin.load("dlib_resnet_v1")`` on dlib chips re-cropped from the
ArcFace-aligned CelebA images (flip-sum, unit norm; computed once and cached in the run folder).
Student: MobileFaceNet at 112x112 (insightface blocks 1-4-6-2, 128-d embedding, under 2M
parameters), trained on CelebA identities (celeba_identities colour + grey; the LFW-overlap
candidates and the 50 held-out identities of ``keras_facemargin.inference.calibrate`` removed).

Loss (``--mode``):

* ``distill``: embedding-level distillation only, ``1 - cos(student, teacher)``, the teacher's
  unit embeddings centred on their training-set mean (`center_teacher`; ``--no-center-teacher``
  distils onto the raw ones);
* ``distill_arcface`` / ``distill_kappaface``: ``margin softmax + --distill-weight * distillation``
  with ArcFace / KappaFace (memory buffer, updated by ``callbacks.KappaUpdater``) on the labels;
* ``arcface``: ArcFace only (the recipe of the shipped ``arcface_celeba_mbf``, at 112 px).

Selection (``--epochs``, ``--distill-weight``) uses held-out identity pairs, never LFW; LFW is
measured once at the end through ``FaceVerifier`` crops (``benchmarks/zoo_lfw.py`` after packaging).
The run resumes from its last epoch (``keras.callbacks.BackupAndRestore``)::

    python examples/distill_dlib.py --mode distill_arcface --epochs 12 --output runs/distill/da
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODES = ("distill", "distill_arcface", "distill_kappaface", "arcface")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="distill_arcface")
    p.add_argument("--data-dir", default=os.environ.get("KFM_DATA_DIR", str(Path(__file__).resolve().parents[2]
                                                                            / "shared" / "data")))
    p.add_argument("--output", default="runs/distill")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--distill-weight", type=float, default=8.0, help="weight of 1 - cos next to the margin loss")
    p.add_argument("--scale", type=float, default=32.0, help="logit scale s of the margin head")
    p.add_argument("--margin", type=float, default=0.5, help="ArcFace m / KappaFace m0")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only this many training images (tests)")
    p.add_argument("--no-center-teacher", dest="center_teacher", action="store_false",
                   help="distil onto dlib's raw unit embeddings instead of centred ones (see module docstring)")
    return p.parse_args(argv)


def load_data(args):
    import numpy as np

    from keras_facemargin.data import load_identity_folders, read_identity_list
    from keras_facemargin.inference.calibrate import heldout_identities

    ids = Path(args.data_dir) / "celeba_identities"
    held = heldout_identities(args.data_dir)
    exclude = set(read_identity_list(ids / "lfw_overlap_candidates.tsv")) | set(held)
    data = load_identity_folders([ids / "color_arcface112", ids / "gray_arcface112"], image_size=112,
                                 crop="none", exclude=sorted(exclude))
    images, labels = data.images, np.asarray(data.labels, np.int32)
    if args.limit:
        rng = np.random.default_rng(args.seed)
        rows = np.sort(rng.choice(len(labels), size=min(args.limit, len(labels)), replace=False))
        images, labels = images[rows], labels[rows]
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.astype(np.int32)
    return images, labels, held


def teacher_embeddings(images, out_dir):
    """Flip-sum unit dlib embeddings of dlib chips re-cropped from the 112 crops; cached."""
    import numpy as np

    key = hashlib.sha256(images[:: max(1, len(images) // 64)].tobytes() + str(images.shape).encode()).hexdigest()[:16]
    cache = Path(out_dir) / f"teacher_{key}.npy"
    if cache.is_file():
        return np.load(cache)
    import keras_facemargin as kfm
    from keras_facemargin.inference.calibrate import crop_from_arcface112

    verifier = kfm.FaceVerifier("dlib_resnet_v1", threshold=0.5, batch_size=64)
    out = []
    for i in range(0, len(images), 512):
        chips = np.stack([crop_from_arcface112(im, verifier.crop) for im in images[i:i + 512]])
        out.append(verifier.embed_crops(chips).astype(np.float32))
        print(f"teacher: {min(i + 512, len(images))}/{len(images)}", flush=True)
    emb = np.concatenate(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + f".tmp{os.getpid()}.npy")
    np.save(tmp, emb)
    os.replace(tmp, cache)
    return emb


def center_teacher(teacher):
    """Unit teacher embeddings minus their mean over the training images, renormalised.

    dlib's descriptors are not centred: any two faces have a cosine near 0.8 and the identity lives
    in the small residual. Distilling ``1 - cos`` onto the raw vectors rewards the shared mean
    direction (measured: a student at cosine 0.92 to the raw teacher verified held-out pairs at
    75.5% against the teacher's 97.9%); onto centred vectors the target is the residual itself.
    """
    import numpy as np

    centred = teacher - teacher.mean(axis=0, keepdims=True)
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_student(args):
    import keras_facemargin as kfm

    return kfm.backbones.MobileFaceNet(image_size=112, embedding_dim=args.embedding_dim,
                                       blocks=(1, 4, 6, 2), outer_width_factor=1)


def build_training_model(args, backbone, num_classes, counts, num_samples):
    import keras

    import keras_facemargin as kfm

    images = keras.Input((112, 112, 3), name="images")
    labels = keras.Input((), dtype="int32", name="labels")
    index = keras.Input((), dtype="int32", name="index")
    teacher = keras.Input((128,), name="teacher")
    emb = backbone(images)
    inputs = {"images": images, "labels": labels, "index": index, "teacher": teacher}
    outputs = {}
    if args.mode != "arcface":
        outputs["distill"] = CosineDistance(name="distill")([emb, teacher])
    if args.mode in ("arcface", "distill_arcface"):
        head = kfm.layers.ArcMarginDense(num_classes, scale=args.scale, margin=args.margin, name="head")
        outputs["logits"] = head([emb, labels])
    elif args.mode == "distill_kappaface":
        head = kfm.layers.KappaMarginDense(num_classes=num_classes, class_counts=counts, num_samples=num_samples,
                                           scale=args.scale, margin=args.margin, name="head")
        outputs["logits"] = head([emb, labels, index])
    return keras.Model(inputs, outputs, name=f"student_{args.mode}")


def _register():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="keras_facemargin_examples")
    class CosineDistance(keras.layers.Layer):
        """``1 - cos(student, teacher)`` per sample (embedding-level distillation, Hinton-style on
        the unit sphere; the teacher is already unit norm)."""

        def call(self, inputs):
            s, t = inputs
            s = ops.normalize(s, axis=-1, epsilon=1e-12)
            t = ops.normalize(t, axis=-1, epsilon=1e-12)
            return 1.0 - ops.sum(s * t, axis=-1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0][0],)

    return CosineDistance


def holdout_accuracy(backbone, data_dir):
    """10-fold accuracy on 3,000 balanced pairs of the held-out identities (selection, not LFW)."""
    from keras_facemargin.evaluation.verification import embed_images, kfold_verification, pair_scores
    from keras_facemargin.inference.calibrate import load_heldout

    sys.path.insert(0, str(Path(__file__).parent))
    from celeba_lfw import holdout_pairs

    images, labels, _ = load_heldout(data_dir)
    emb = embed_images(backbone, images, batch_size=128, flip=True)  # uint8: normalised as in training
    a, b, same = holdout_pairs(images, labels, 3000, seed=0)
    res = kfold_verification(pair_scores(emb[a], emb[b]), same, folds=10)
    return 100 * res.accuracy_mean, 100 * res.accuracy_std


def main(argv=None):
    args = parse_args(argv)
    if args.mode != "arcface" and args.embedding_dim != 128:
        sys.exit("--embedding-dim must be 128 (the teacher's) when distilling")
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_facemargin as kfm

    global CosineDistance
    CosineDistance = _register()
    keras.utils.set_random_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, held = load_data(args)
    num_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=num_classes)
    print(f"training: {len(labels)} images, {num_classes} identities; held out: {len(held)} identities", flush=True)
    teacher = teacher_embeddings(images, out.parent if out.parent != Path("") else out) \
        if args.mode != "arcface" else np.zeros((len(labels), 128), np.float32)
    if args.mode != "arcface" and args.center_teacher:
        teacher = center_teacher(teacher)
    backbone = build_student(args)
    print(f"student: {backbone.count_params():,} parameters", flush=True)
    model = build_training_model(args, backbone, num_classes, counts, len(labels))
    steps = int(np.ceil(len(labels) / args.batch_size))
    warmup = min(steps, steps * args.epochs // 10)
    sched = keras.optimizers.schedules.CosineDecay(args.lr * 0.1, steps * args.epochs - warmup, alpha=0.01,
                                                   warmup_target=args.lr, warmup_steps=warmup)
    losses, weights = {}, {}
    if "logits" in model.output:
        losses["logits"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        weights["logits"] = 1.0
    if "distill" in model.output:
        losses["distill"] = lambda y_true, y_pred: y_pred  # the layer outputs the per-sample loss
        weights["distill"] = args.distill_weight if "logits" in model.output else 1.0
    model.compile(optimizer=keras.optimizers.SGD(sched, momentum=0.9, weight_decay=5e-4), loss=losses,
                  loss_weights=weights)

    def make(images, labels, teacher):
        ds = tf.data.Dataset.from_tensor_slices((images, labels, np.arange(len(labels), dtype=np.int32), teacher))
        ds = ds.shuffle(len(labels), seed=args.seed, reshuffle_each_iteration=True)

        def prep(x, y, i, t):
            x = tf.image.random_flip_left_right(x)
            x = (tf.cast(x, tf.float32) - 127.5) / 128.0
            targets = {k: (y if k == "logits" else tf.zeros(())) for k in model.output}
            return {"images": x, "labels": y, "index": i, "teacher": t}, targets

        return ds.map(prep, num_parallel_calls=2).batch(args.batch_size, drop_remainder=True).prefetch(2)

    callbacks = [keras.callbacks.BackupAndRestore(str(out / "backup")),
                 keras.callbacks.CSVLogger(str(out / "history.csv"), append=True)]
    if args.mode == "distill_kappaface":
        callbacks.append(kfm.callbacks.KappaUpdater())
    t0 = time.time()
    model.fit(make(images, labels, teacher), epochs=args.epochs, callbacks=callbacks, verbose=2)
    train_s = time.time() - t0
    backbone.save(out / "backbone.keras")
    acc, std = holdout_accuracy(backbone, args.data_dir)
    result = {"mode": args.mode, "epochs": args.epochs, "distill_weight": args.distill_weight, "scale": args.scale,
              "margin": args.margin, "images": int(len(labels)), "identities": num_classes,
              "params": int(backbone.count_params()), "heldout_accuracy": acc, "heldout_std": std,
              "train_seconds": train_s, "command": "python examples/distill_dlib.py " + " ".join(sys.argv[1:])}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
