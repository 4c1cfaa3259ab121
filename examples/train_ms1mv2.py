"""Train a face recognizer with the KappaFace paper recipe on MS1MV2 (insightface `faces_emore`).

What: IResNet-100 + KappaFace head (s=64, m0=0.8, T=0.4, gamma=0.7, memory buffer), global batch 512,
SGD lr 0.1 (scaled by batch/512), momentum 0.9, weight decay 5e-4, lr / 10 at the start of epochs
10, 18 and 22, 24 epochs (Oinar, Le & Woo, IEEE Access 2023, Sec. IV-A). `--loss arcface` etc. swap the head.

Data: `--data /path/to/faces_emore`, the insightface RecordIO folder (`train.rec`, `train.idx`,
`property`; 85,742 identities, 5.8M 112x112 images) with its `.bin` verification sets (lfw.bin,
cfp_fp.bin, agedb_30.bin, ...), evaluated at every epoch end as `val_<set>_accuracy`. `--data` also
takes an image-folder tree `root/<identity>/<image>.jpg` and TFRecord files of tools/rec2tfrecord.py
(a .tfrecord file, a glob or a folder of them); the kind is detected and printed. Repeat `--data` to
train on several roots as one label space: image-folder identities with the same folder name are one
identity (`--merge-identities by_name`, the default; `per_root` keeps them apart) and the same
identity + file name is kept once; `--exclude-identities FILE` drops the listed identity names (e.g.
LFW-overlap candidates). What was read, merged, deduplicated, excluded and skipped as bad is printed
and written to data_report.json in the run folder.
Without `--data` it trains the embedded synthetic default (generated identities, a small IResNet,
held-out verification at the end): about 3 minutes on 2 CPU cores (measured: 189 s, 75.2% held-out
accuracy with the paper's m0=0.8; that margin converges poorly at this small scale, `--margin 0.5`
does better, see docs/results.md).

Millions of identities: `--sample-rate 0.1` trains with Partial FC (An et al., ICCVW 2021): each step
computes the logits on the batch's classes plus random others, 10% of the classes in all, and only
those rows of the class-centre matrix get a gradient (keras_facemargin.layers.PartialFC; every --loss
composes); on TensorFlow only those rows and their momentum are updated (training.RowSparseSGD). `--experiment glint360k` is insightface's Glint360K recipe (360,232 identities: CosFace
m=0.4, batch 1024, 20 epochs, lr / 10 at 8, 12, 15, 18, fp16, sample rate 0.1).

More identities than one device holds: `--backend jax --shard-classes` trains on JAX under a
`keras.distribution.ModelParallel` that splits the class-centre matrix over all devices along the class
axis (C/N centres per device, with their momentum; the KappaFace per-class state and memory-buffer rows
are split too), while the backbone runs data-parallel on the same devices
(keras_facemargin.training.distribution.class_sharded_distribution). The number of identities and the
batch size must be divisible by the device count. `--backend jax` alone trains on JAX (DataParallel over
several devices). JAX runs checkpoint to .npz files of every model and optimizer variable
(keras_facemargin.callbacks.WeightsCheckpoint) and resume from them like TensorFlow runs.

How long: MS1MV2 is 11,372 steps of 512 per epoch; IResNet-100 trains at roughly 1,000-1,500 images/s
on 8 V100-class GPUs (insightface's reports), i.e. about 1.5 h per epoch, 1.5-2 days for 24 epochs.
The KappaFace memory buffer needs 12 GB (float32) or 6 GB (`--buffer-dtype float16`) on the device.

How: all visible GPUs under `MirroredStrategy` (`model.fit`), or, with `--multi-worker`, every host
under `MultiWorkerMirroredStrategy` from `TF_CONFIG` (custom training loop; start the same command
on every worker). Outputs go to `<--output>/<name>/`: config.json, checkpoints/, history.jsonl,
training.png, model.keras, results.json. Re-running the same command resumes from the newest
checkpoint (written every `--save-every-steps` steps and at epoch ends); `--resume DIR` resumes the
run in DIR with its saved config. A resume on other data (other identities, images or options than
the run's data_report.json records) stops with an error instead of mixing up labels.

Examples:
    python examples/train_ms1mv2.py                                   # synthetic default
    python examples/train_ms1mv2.py --data /data/faces_emore          # the paper recipe
    python examples/train_ms1mv2.py --data /data/faces_emore --loss arcface --batch-size 256 --mixed-precision
    python examples/train_ms1mv2.py --data /data/faces_emore --sample-rate 0.1      # KappaFace + Partial FC
    python examples/train_ms1mv2.py --experiment glint360k --data /data/glint360k
    python examples/train_ms1mv2.py --data /data/faces_emore --backend jax --shard-classes  # centres over devices
    python examples/train_ms1mv2.py --data celeba_identities/color_arcface112 --data celeba_align_10k/images \\
        --exclude-identities celeba_identities/lfw_overlap_candidates.tsv --image-size 112 \\
        --backbone iresnet18 --batch-size 64 --epochs 3 --lr-steps 2
    TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        python examples/train_ms1mv2.py --data /data/faces_emore --multi-worker
"""

import argparse
import os
import sys


def backend_flag(argv):
    """The value of `--backend` in `argv`, or None: KERAS_BACKEND must be set before keras is imported."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__" and backend_flag(sys.argv[1:]) in ("tensorflow", "jax"):
    os.environ["KERAS_BACKEND"] = backend_flag(sys.argv[1:])
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import keras_facemargin  # noqa: F401
except ImportError:  # running from a source checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from keras_facemargin.backbones.presets import BACKBONE_PRESETS
    from keras_facemargin.training.config import EXPERIMENTS, LOSSES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", action="append", metavar="PATH",
                   help="training data, repeatable (several roots form one label space): an insightface RecordIO "
                        "folder (train.rec/train.idx/property, e.g. faces_emore), an image-folder tree "
                        "root/<identity>/<image>.jpg, or TFRecord files of tools/rec2tfrecord.py (a .tfrecord file, "
                        "a glob or a folder of *.tfrecord); omit for the synthetic default")
    p.add_argument("--merge-identities", choices=("by_name", "per_root"),
                   help="image-folder identities with the same name in several --data roots: one identity, "
                        "the same identity + file name kept once (by_name, default) or different identities (per_root)")
    p.add_argument("--exclude-identities", metavar="FILE",
                   help="identity names to leave out of training: one per line, or a .tsv (header line) whose "
                        "first column is the name, e.g. celeba_identities/lfw_overlap_candidates.tsv")
    p.add_argument("--no-flip", dest="augment_flip", action="store_false", default=None,
                   help="no random horizontal flips")
    p.add_argument("--experiment", choices=sorted(EXPERIMENTS),
                   help="named defaults (default: ms1mv2 with --data, synthetic without)")
    p.add_argument("--name", help="run folder name (default: <experiment>_<loss>_<backbone>)")
    p.add_argument("--loss", choices=LOSSES)
    p.add_argument("--estimator", choices=("memory_buffer", "momentum_encoder"))
    p.add_argument("--backbone", choices=sorted(BACKBONE_PRESETS))
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--image-size", type=int, help="resize images to this size (default: the data's)")
    p.add_argument("--scale", type=float, help="logit scale s")
    p.add_argument("--margin", type=float, help="m (ArcFace/CosFace) or m0 (KappaFace); default: the paper's")
    p.add_argument("--temperature", type=float, help="KappaFace T")
    p.add_argument("--gamma", type=float, help="KappaFace gamma")
    p.add_argument("--buffer-dtype", choices=("float32", "float16"))
    p.add_argument("--sample-rate", type=float,
                   help="Partial FC: fraction of the classes in each step's logits, in (0, 1] (default 1: full FC)")
    p.add_argument("--batch-size", type=int, help="global batch size (all GPUs and workers)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="lr at batch 512 (scaled by batch/512)")
    p.add_argument("--lr-steps", help="comma-separated epochs where the lr is divided by 10, e.g. 10,18,22")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--steps-per-epoch", type=int, help="default: images // batch size")
    p.add_argument("--save-every-steps", type=int, help="mid-epoch checkpoint period (0: epoch ends only)")
    p.add_argument("--verification-sets", help="comma-separated .bin names, 'auto' (all found) or '' (none)")
    p.add_argument("--mixed-precision", action="store_true", default=None, help="mixed_float16 (head stays float32)")
    p.add_argument("--multi-worker", action="store_true", default=None,
                   help="MultiWorkerMirroredStrategy from TF_CONFIG, custom loop")
    p.add_argument("--backend", choices=("tensorflow", "jax"),
                   help="Keras backend (default tensorflow); set before keras is imported when this script runs")
    p.add_argument("--shard-classes", action="store_true", default=None,
                   help="with --backend jax: split the class centres (and KappaFace per-class state, memory rows) "
                        "over all devices along the class axis (keras.distribution.ModelParallel)")
    p.add_argument("--tensorboard", action="store_true", default=None, help="TensorBoard logs (needs tensorboard)")
    p.add_argument("--no-plots", dest="plots", action="store_false", default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="parent folder of the run folder (default: runs)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2))
    p.add_argument("--resume", metavar="RUN_DIR", help="resume the run in RUN_DIR with its config.json")
    return p.parse_args(argv)


def config_from_args(args):
    """The `TrainConfig` the flags describe (or the saved config of `--resume`)."""
    from pathlib import Path

    from keras_facemargin.training.config import TrainConfig, get_experiment

    if args.resume:
        given = sorted(k for k, v in vars(args).items()
                       if k not in ("experiment", "resume") and v is not None)
        if given:
            raise SystemExit(f"--resume {args.resume} continues the run with its saved config.json; "
                             f"drop the other flags ({', '.join('--' + g.replace('_', '-') for g in given)}) "
                             "or start a new run with --name.")
        path = Path(args.resume) / "config.json"
        if not path.is_file():
            raise SystemExit(f"--resume {args.resume}: no config.json there.")
        cfg = TrainConfig.from_json(path)
        if cfg.run_dir.resolve() != Path(args.resume).resolve():  # moved folder: follow it
            cfg = cfg.replace(output=str(Path(args.resume).parent), name=Path(args.resume).name)
        return cfg
    fields = {k: v for k, v in vars(args).items() if k not in ("experiment", "resume")}
    if args.exclude_identities is not None:
        from keras_facemargin.data.training_set import read_identity_list

        try:
            fields["exclude_identities"] = read_identity_list(args.exclude_identities)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--exclude-identities: {e}") from None
    if args.lr_steps is not None:
        try:
            fields["lr_steps"] = tuple(int(e) for e in args.lr_steps.split(",") if e.strip())
        except ValueError:
            raise SystemExit(f"--lr-steps must be comma-separated epochs, got {args.lr_steps!r}") from None
    experiment = args.experiment or ("ms1mv2" if args.data else "synthetic")
    try:
        return get_experiment(experiment, **fields)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    import keras

    if keras.backend.backend() != cfg.backend:
        raise SystemExit(
            f"The run's backend is {cfg.backend!r} (--backend, default tensorflow), but keras already runs on the "
            f"{keras.backend.backend()!r} backend (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}). Run this script "
            f"directly with --backend {cfg.backend}, or set KERAS_BACKEND={cfg.backend} before keras is imported."
        )
    if cfg.synthetic:
        print("No --data given: training the embedded SYNTHETIC default (generated faces, small IResNet).")
    from keras_facemargin.training import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
