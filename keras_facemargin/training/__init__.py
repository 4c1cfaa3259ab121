"""Training recipes: config, lr schedules, strategies, custom loop, plots and the trainer.

The callbacks live in `keras_facemargin.callbacks`.

Example:
    >>> from keras_facemargin import training
    >>> cfg = training.get_experiment("ms1mv2", data="/data/faces_emore")   # the KappaFace paper recipe
    >>> training.run(cfg)
"""

from keras_facemargin.training.config import EXPERIMENTS, LOSSES, TrainConfig, get_experiment  # noqa: F401
from keras_facemargin.training.custom_loop import CustomLoop  # noqa: F401
from keras_facemargin.training.heads import build_head  # noqa: F401
from keras_facemargin.training.plots import plot_training  # noqa: F401
from keras_facemargin.training.schedules import EpochStepDecay, scaled_lr  # noqa: F401
from keras_facemargin.training.strategy import get_strategy, is_chief, task_info  # noqa: F401
from keras_facemargin.training.trainer import Trainer, epoch_seed, prepare_data, run  # noqa: F401
