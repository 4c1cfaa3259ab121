"""`TrainConfig`: the frozen, JSON-serialisable description of a training run.

Named experiments hold the defaults (`EXPERIMENTS`); command-line flags
override single fields (`TrainConfig.replace`). The resolved config is written
as `config.json` into the run folder `<output>/<name>/`.

Example:
    >>> cfg = get_experiment("ms1mv2", loss="arcface", batch_size=256)
    >>> cfg.effective_lr            # 0.1 * 256 / 512
    0.05
    >>> TrainConfig.from_json(cfg.to_json()) == cfg
    True
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

def loss_names():
    """The names `loss` accepts: every head registered now (`keras_facemargin.layers.head_names()`).

    Read at each validation, so a head registered after this module was imported is accepted.

    Example:
        >>> "arcface" in loss_names()
        True
    """
    from keras_facemargin.layers.registry import head_names

    return tuple(head_names())


def __getattr__(name):
    if name == "LOSSES":  # the old constant, now read from the live registry
        return loss_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ESTIMATORS = ("memory_buffer", "momentum_encoder")
BUFFER_DTYPES = ("float32", "float16")
PRECISIONS = ("float32", "mixed_float16")
BACKENDS = ("tensorflow", "jax")
MERGE_MODES = ("by_name", "per_root")  # as keras_facemargin.data.sources.MERGE_MODES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (see `EXPERIMENTS` for the named defaults).

    Args:
        experiment: name of the base experiment (`EXPERIMENTS` key).
        name: run name, the folder under `output` (default: `<experiment>_<loss>_<backbone>`).
        data: training data roots, a path or a tuple of paths (stored as a tuple), each an
            insightface RecordIO folder (`train.rec`/`train.idx`/`property`, with its `.bin`
            verification sets), an image-folder tree `root/<identity>/<image>.jpg`, or TFRecord
            files (a `.tfrecord` file, a glob or a folder of `*.tfrecord`); several roots form one
            label space (see `keras_facemargin.data.sources`). `None` trains on generated `SyntheticFaces`.
        merge_identities: image-folder identities with the same folder name in several roots:
            `"by_name"` (default; one identity, and the same identity + file name is kept once)
            or `"per_root"` (different identities).
        exclude_identities: image-folder identity names left out of training (e.g. LFW-overlap
            candidates; `keras_facemargin.data.sources.read_identity_list` reads a list file).
        follow_links: image-folder roots: also read symbolic links whose target lies outside the
            root (default: such links are refused, never opened, and listed as `outside_root` bad
            records in `data_report.json`; FIFOs, sockets, devices and dangling links stay refused).
        augment_flip: random horizontal flips of the training images.
        loss: margin head, a registered name (`loss_names()`, read when the config is checked).
        estimator: KappaFace feature estimator, `"memory_buffer"` or `"momentum_encoder"`.
        backbone: a `keras_facemargin.backbones.BACKBONE_PRESETS` name.
        backbone_kwargs: constructor overrides for the preset (e.g. a smaller `stage_blocks`).
        image_size: input height = width (default: the preset's, 112).
        embedding_dim: embedding size (default: the preset's, 512).
        scale: logit scale s; `None` = the head's paper default (64 for ArcFace/KappaFace).
        margin: m (ArcFace/CosFace) or m0 (KappaFace); `None` = the paper's default.
        temperature, gamma: KappaFace T and gamma.
        buffer_alpha, buffer_dtype: KappaFace memory buffer EMA weight and storage dtype.
        encoder_momentum: KappaFace momentum-encoder EMA momentum.
        sample_rate: Partial FC rate in (0, 1]: below 1 every step computes the logits on the
            batch's classes plus random others, ceil(sample_rate * C) in all
            (`keras_facemargin.layers.PartialFC`); 1 = the full classifier. Below 1 on TensorFlow
            the trainer uses `training.RowSparseSGD` (only the sampled rows of the class matrix and
            of its momentum move; PartialFC v1); on JAX, Keras SGD (dense momentum, every row).
        batch_size: global batch size (all replicas, all workers).
        epochs: number of epochs.
        lr: learning rate at `lr_reference_batch`; the run uses `lr * batch_size / lr_reference_batch`.
        lr_reference_batch: batch size `lr` refers to (the paper: 512).
        lr_steps: epochs at whose start the lr is multiplied by `lr_factor`.
        lr_factor: step decay factor.
        momentum, weight_decay: SGD momentum and (decoupled) weight decay.
        mixed_precision: train under the `mixed_float16` policy (heads stay float32).
        multi_worker: `MultiWorkerMirroredStrategy` from `TF_CONFIG` with the custom loop.
        backend: the Keras backend the run expects, `"tensorflow"` (default; `tf.distribute`) or
            `"jax"` (`keras.distribution`; KERAS_BACKEND must name it before keras is imported,
            `examples/train_ms1mv2.py --backend jax` sets it). On JAX the run checkpoints
            with `keras_facemargin.callbacks.WeightsCheckpoint` (`.npz` files of every model and
            optimizer variable; resumes like the TensorFlow run), each step is `jax.jit`-compiled, and
            several devices train with `keras.distribution.DataParallel`.
        shard_classes: JAX only: split the class-centre matrix (and the KappaFace per-class state and
            memory-buffer rows) over all devices along the class axis
            (`keras_facemargin.training.distribution.class_sharded_distribution`), for more
            identities than one device holds. The number of identities and `batch_size` must be
            divisible by the device count.
        seed: seed of weights, data order and augmentation.
        output: parent folder of the run folder.
        steps_per_epoch: `None` = images // batch_size.
        save_every_steps: mid-epoch checkpoint period in steps (0: epoch ends only).
        keep_checkpoints: checkpoints kept by the `CheckpointManager`.
        verification_sets: comma-separated `.bin` set names to evaluate each epoch,
            `"auto"` (all found in `data`) or `""` (none).
        synthetic_identities, synthetic_heldout: identities of the synthetic default
            (trained / held out for the final verification).
        verbose: Keras verbosity (0, 1 progress bar, 2 one line per epoch).
        plots: write `training.png` at the end (needs matplotlib).
        tensorboard: add a TensorBoard callback (needs tensorboard).
    """

    experiment: str = "ms1mv2"
    name: Optional[str] = None
    data: Optional[tuple] = None
    merge_identities: str = "by_name"
    exclude_identities: tuple = ()
    follow_links: bool = False
    augment_flip: bool = True
    loss: str = "kappaface"
    estimator: str = "memory_buffer"
    backbone: str = "iresnet100"
    backbone_kwargs: dict = dataclasses.field(default_factory=dict)
    image_size: Optional[int] = None
    embedding_dim: Optional[int] = None
    scale: Optional[float] = None
    margin: Optional[float] = None
    temperature: float = 0.4
    gamma: float = 0.7
    buffer_alpha: float = 0.3
    buffer_dtype: str = "float32"
    encoder_momentum: float = 0.999
    sample_rate: float = 1.0
    batch_size: int = 512
    epochs: int = 24
    lr: float = 0.1
    lr_reference_batch: int = 512
    lr_steps: tuple = (10, 18, 22)
    lr_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    mixed_precision: bool = False
    multi_worker: bool = False
    backend: str = "tensorflow"
    shard_classes: bool = False
    seed: int = 0
    output: str = "runs"
    steps_per_epoch: Optional[int] = None
    save_every_steps: int = 1000
    keep_checkpoints: int = 2
    verification_sets: str = "auto"
    synthetic_identities: int = 600
    synthetic_heldout: int = 200
    verbose: int = 1
    plots: bool = True
    tensorboard: bool = False

    def __post_init__(self):
        object.__setattr__(self, "lr_steps", tuple(int(e) for e in self.lr_steps))
        object.__setattr__(self, "backbone_kwargs", dict(self.backbone_kwargs))
        object.__setattr__(self, "data", _data_paths(self.data))
        if isinstance(self.exclude_identities, str):
            raise ValueError("`exclude_identities` must be a sequence of identity names, not a string. Received: "
                             f"exclude_identities={self.exclude_identities!r}")
        object.__setattr__(self, "exclude_identities", tuple(self.exclude_identities))
        self.validate()

    # -- checks ------------------------------------------------------------------
    def validate(self):
        """Raise `ValueError` naming the first bad field."""
        _choice("loss", self.loss, loss_names())
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("buffer_dtype", self.buffer_dtype, BUFFER_DTYPES)
        _choice("merge_identities", self.merge_identities, MERGE_MODES)
        bad = [n for n in self.exclude_identities if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ValueError(f"`exclude_identities` must hold non-empty identity names. Received: {bad[:3]!r}")
        if self.exclude_identities and self.data is None:
            raise ValueError("`exclude_identities` needs `data` (the synthetic default has no named identities). "
                             f"Received: exclude_identities={self.exclude_identities[:3]!r}...")
        _choice("backend", self.backend, BACKENDS)
        if not isinstance(self.augment_flip, bool):
            raise ValueError(f"`augment_flip` must be True or False. Received: augment_flip={self.augment_flip!r}")
        if not isinstance(self.follow_links, bool):
            raise ValueError(f"`follow_links` must be True or False. Received: follow_links={self.follow_links!r}")
        from keras_facemargin.backbones.presets import BACKBONE_PRESETS

        _choice("backbone", self.backbone, tuple(BACKBONE_PRESETS))
        for field in ("batch_size", "epochs", "lr_reference_batch", "keep_checkpoints",
                      "synthetic_identities"):
            _positive_int(field, getattr(self, field))
        for field in ("image_size", "embedding_dim", "steps_per_epoch"):
            if getattr(self, field) is not None:
                _positive_int(field, getattr(self, field))
        for field in ("save_every_steps", "synthetic_heldout", "seed"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{field}` must be a non-negative integer. Received: {field}={value!r}")
        for field in ("lr", "scale"):
            value = getattr(self, field)
            if field == "scale" and value is None:
                continue  # each head's paper default (64 for ArcFace/KappaFace, 30 for LDAM)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"`{field}` must be a positive number. Received: {field}={value!r}")
        if (not isinstance(self.sample_rate, (int, float)) or isinstance(self.sample_rate, bool)
                or not 0 < self.sample_rate <= 1):
            raise ValueError(f"`sample_rate` must be in (0, 1]. Received: sample_rate={self.sample_rate!r}")
        if not 0 < self.lr_factor <= 1:
            raise ValueError(f"`lr_factor` must be in (0, 1]. Received: lr_factor={self.lr_factor!r}")
        if list(self.lr_steps) != sorted(set(self.lr_steps)) or any(e <= 0 for e in self.lr_steps):
            raise ValueError(
                f"`lr_steps` must be strictly increasing positive epochs. Received: lr_steps={self.lr_steps!r}"
            )
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"`weight_decay` must be >= 0 and `momentum` in [0, 1). Received: "
                f"weight_decay={self.weight_decay!r}, momentum={self.momentum!r}"
            )
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={self.verbose!r}")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"`name` must be a plain folder name. Received: name={self.name!r}")
        self._validate_backend()

    def _validate_backend(self):
        if not isinstance(self.shard_classes, bool):
            raise ValueError(f"`shard_classes` must be True or False. Received: shard_classes={self.shard_classes!r}")
        if self.shard_classes and self.backend != "jax":
            raise ValueError(
                f"`shard_classes` (--shard-classes) needs backend='jax' (--backend jax; keras.distribution "
                f"ModelParallel). Received: backend={self.backend!r}. On TensorFlow use MirroredStrategy (all "
                "visible GPUs, the default) with Partial FC (`sample_rate` < 1, --sample-rate 0.1) for many identities."
            )
        if self.shard_classes and self.sample_rate < 1:
            raise ValueError(
                "`shard_classes` with Partial FC (`sample_rate` < 1) is not supported: use one or the other. "
                f"Received: sample_rate={self.sample_rate!r}"
            )
        if self.backend != "tensorflow" and self.multi_worker:
            raise ValueError(
                "`multi_worker` (MultiWorkerMirroredStrategy, TF_CONFIG) needs backend='tensorflow'. "
                f"Received: backend={self.backend!r}"
            )

    # -- derived -----------------------------------------------------------------
    @property
    def run_name(self):
        """`name`, or `<experiment>_<loss>_<backbone>`."""
        return self.name or f"{self.experiment}_{self.loss}_{self.backbone}"

    @property
    def run_dir(self):
        """`Path(output) / run_name`: config, checkpoints, logs and plots."""
        return Path(self.output) / self.run_name

    @property
    def effective_lr(self):
        """`lr * batch_size / lr_reference_batch` (linear scaling rule)."""
        return self.lr * self.batch_size / self.lr_reference_batch

    @property
    def synthetic(self):
        """True when the run trains on generated faces (no `data`)."""
        return self.data is None

    # -- (de)serialisation -------------------------------------------------------
    def replace(self, **changes):
        """A copy with `changes` applied (unknown fields raise `ValueError`)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {unknown}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        d["data"] = None if self.data is None else list(self.data)
        d["exclude_identities"] = list(self.exclude_identities)
        return d

    def to_json(self):
        """The config as a JSON string (what `config.json` holds)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {unknown}.")
        return cls(**d)

    @classmethod
    def from_json(cls, text_or_path):
        """Parse `to_json()` output, or read a `config.json` path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))

    def save(self, path=None):
        """Write `to_json()` to `path` (default `run_dir/config.json`) atomically; returns the path.

        A crash while saving leaves the previous file (see `keras_facemargin.utils.atomic`).
        """
        from keras_facemargin.utils.atomic import atomic_write_text

        path = Path(path) if path is not None else self.run_dir / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.to_json() + "\n")


def _data_paths(data):
    """`data` as a tuple of path strings, or None (synthetic) for None or an empty sequence."""
    if data is None:
        return None
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = (data,)
    try:
        paths = tuple(os.fsdecode(p) for p in data)
    except TypeError:
        raise ValueError(f"`data` must be a path or a sequence of paths. Received: data={data!r}") from None
    if any(not p.strip() for p in paths):
        raise ValueError(f"`data` paths must be non-empty. Received: data={data!r}")
    return paths or None


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


#: Named experiments: field overrides of the `TrainConfig` defaults.
EXPERIMENTS = {
    # KappaFace paper (Sec. IV-A): MS1MV2, IResNet-100, s=64, m0=0.8, T=0.4, gamma=0.7,
    # batch 512, SGD lr 0.1 / 10 at epochs 10, 18, 22, 24 epochs, momentum 0.9, wd 5e-4.
    "ms1mv2": {},
    # The embedded default: a few minutes on 2 CPU cores, no data needed.
    "synthetic": {
        "backbone": "iresnet18",
        "backbone_kwargs": {"stage_blocks": [1, 1, 1, 1], "stage_filters": [16, 32, 64, 128]},
        "image_size": 48,
        "embedding_dim": 128,
        "scale": 32.0,
        "batch_size": 64,
        "lr_reference_batch": 64,
        "epochs": 6,
        "lr_steps": (4, 5),
        "save_every_steps": 50,
        "synthetic_identities": 600,
        "synthetic_heldout": 200,
    },
    # Glint360K (360,232 identities, 17.1M images) with insightface's arcface_torch recipe
    # (configs/glint360k_r50.py with its step decay; the r100 model they release was trained the
    # same way): CosFace s=64 m=0.4, IResNet-100, 512-d, 8 GPUs x 128 = batch 1024, SGD lr 0.1 per
    # 512 images, momentum 0.9, wd 5e-4, 20 epochs, lr / 10 at epochs 8, 12, 15, 18, fp16, and Partial
    # FC with sample rate 0.1 (An et al., ICCVW 2021; "glint360k_cosface_r100_fp16_0.1").
    "glint360k": {
        "loss": "cosface",
        "margin": 0.4,
        "scale": 64.0,
        "batch_size": 1024,
        "lr_reference_batch": 512,
        "epochs": 20,
        "lr_steps": (8, 12, 15, 18),
        "weight_decay": 5e-4,
        "mixed_precision": True,
        "sample_rate": 0.1,
    },
}


def get_experiment(experiment="ms1mv2", **overrides):
    """The `TrainConfig` of a named experiment with `overrides` applied.

    Args:
        experiment: a key of `EXPERIMENTS`.
        **overrides: `TrainConfig` fields; `None` values are ignored (unset flags).

    Example:
        >>> get_experiment("synthetic", epochs=2).epochs
        2
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"`experiment` must be one of {sorted(EXPERIMENTS)}. Received: {experiment!r}")
    fields = dict(EXPERIMENTS[experiment], experiment=experiment)
    # `None` means "not given" except for fields whose meaningful value is None.
    fields.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"Unknown TrainConfig field(s) {unknown}.")
    return TrainConfig(**fields)
