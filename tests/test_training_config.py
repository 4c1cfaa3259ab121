"""TrainConfig round trip and validation, the paper's lr schedule, the head registry, the example's flags."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_facemargin.training.config import EXPERIMENTS, TrainConfig, get_experiment
from keras_facemargin.training.schedules import EpochStepDecay, scaled_lr

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))


def test_default_is_the_kappaface_paper_recipe():
    cfg = get_experiment("ms1mv2", data="/data/faces_emore")
    assert (cfg.loss, cfg.estimator, cfg.backbone) == ("kappaface", "memory_buffer", "iresnet100")
    assert (cfg.scale, cfg.margin, cfg.temperature, cfg.gamma) == (None, None, 0.4, 0.7)
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (512, 0.1, 0.9, 5e-4)
    assert (cfg.lr_steps, cfg.epochs, cfg.effective_lr) == ((10, 18, 22), 24, 0.1)
    assert cfg.run_dir == Path("runs/ms1mv2_kappaface_iresnet100")


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_json_round_trip(experiment, tmp_path):
    cfg = get_experiment(experiment, loss="arcface", margin=0.45, lr_steps=(3, 5), mixed_precision=True,
                         output=str(tmp_path))
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and isinstance(again.lr_steps, tuple)
    path = cfg.save()
    assert path == tmp_path / cfg.run_name / "config.json"
    assert TrainConfig.from_json(path) == cfg
    assert json.loads(path.read_text())["lr_steps"] == [3, 5]


def test_frozen_and_replace():
    cfg = get_experiment("synthetic")
    with pytest.raises(Exception):
        cfg.epochs = 3
    assert cfg.replace(epochs=3).epochs == 3 and cfg.epochs == 6
    with pytest.raises(ValueError, match="bogus"):
        cfg.replace(bogus=1)


@pytest.mark.parametrize(
    "field, value",
    [("loss", "no_such_loss"), ("backbone", "vgg"), ("batch_size", 0), ("epochs", -1), ("lr_steps", (18, 10)),
     ("lr", 0.0), ("estimator", "bank"), ("buffer_dtype", "int8"), ("save_every_steps", -5), ("name", "a/b")],
)
def test_bad_field_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_experiment("ms1mv2", **{field: value})


def test_a_head_registered_after_import_is_a_valid_loss():
    """`TrainConfig` checks `loss` against the live head registry, not a snapshot taken at import."""
    from keras_facemargin import layers
    from keras_facemargin.training import config as config_module

    assert "arcface_m04" not in layers.head_names()
    with pytest.raises(ValueError, match="loss"):
        get_experiment("synthetic", loss="arcface_m04")
    layers.register_head("arcface_m04", layers.ArcMarginDense, margin=0.4)
    try:
        cfg = get_experiment("synthetic", loss="arcface_m04")
        assert cfg.loss == "arcface_m04" and "arcface_m04" in config_module.LOSSES
        assert TrainConfig.from_json(cfg.to_json()) == cfg
        assert layers.build_head(cfg.loss, 10).margin == 0.4
    finally:
        del layers.HEADS["arcface_m04"]
    with pytest.raises(ValueError, match="loss"):
        get_experiment("synthetic", loss="arcface_m04")


def _paper_lr(epoch, batch):
    # The KappaFace/ArcFace MS1MV2 schedule, written out: 0.1 until epoch 10, then /10 at 10, 18, 22.
    if epoch < 10:
        lr = 0.1
    elif epoch < 18:
        lr = 0.01
    elif epoch < 22:
        lr = 0.001
    else:
        lr = 0.0001
    return lr * batch / 512


@pytest.mark.parametrize("batch, steps", [(512, 7), (256, 3), (1024, 1)])
def test_lr_schedule_against_the_paper_epochs(batch, steps):
    cfg = get_experiment("ms1mv2", batch_size=batch)
    sched = EpochStepDecay(cfg.effective_lr, steps, cfg.lr_steps, cfg.lr_factor)
    for epoch in range(24):
        for step in (epoch * steps, epoch * steps + steps - 1):  # first and last step of the epoch
            np.testing.assert_allclose(float(sched(step)), _paper_lr(epoch, batch), rtol=1e-6)
        assert sched.lr_at_epoch(epoch) == pytest.approx(_paper_lr(epoch, batch))


def test_schedule_serialises_and_validates():
    import keras

    sched = EpochStepDecay(0.05, 10, (2, 4))
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert again.get_config() == sched.get_config()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        EpochStepDecay(0.1, 0)
    assert scaled_lr(0.1, 128) == pytest.approx(0.025)


def test_head_registry_uses_paper_margins():
    from keras_facemargin import layers
    from keras_facemargin.training.heads import build_head

    assert build_head("arcface", 10).margin == 0.5
    assert build_head("cosface", 10).margin == 0.35
    kappa = build_head("kappaface", 3, class_counts=[1, 2, 3], num_samples=6, gamma=0.5)
    assert isinstance(kappa, layers.KappaMarginDense) and (kappa.margin, kappa.gamma) == (0.8, 0.5)
    assert type(build_head("normsoftmax", 4)) is layers.CosineDense
    assert type(build_head("softmax", 4)) is layers.SoftmaxDense
    with pytest.raises(ValueError, match="loss"):
        build_head("no_such_loss", 4)
    with pytest.raises(ValueError, match="margin"):
        build_head("normsoftmax", 4, margin=0.2)


def test_example_flags_resolve_the_config():
    import train_ms1mv2 as example

    cfg = example.config_from_args(example.parse_args(
        ["--data", "/d/faces_emore", "--loss", "arcface", "--batch-size", "256", "--lr-steps", "8,16",
         "--mixed-precision", "--buffer-dtype", "float16", "--seed", "3"]))
    assert (cfg.experiment, cfg.loss, cfg.batch_size, cfg.lr_steps) == ("ms1mv2", "arcface", 256, (8, 16))
    assert cfg.mixed_precision and cfg.buffer_dtype == "float16" and cfg.seed == 3
    assert cfg.effective_lr == pytest.approx(0.05) and cfg.epochs == 24
    synthetic = example.config_from_args(example.parse_args([]))
    assert synthetic.synthetic and synthetic.experiment == "synthetic"
    with pytest.raises(SystemExit, match="batch_size"):
        example.config_from_args(example.parse_args(["--batch-size", "0"]))
