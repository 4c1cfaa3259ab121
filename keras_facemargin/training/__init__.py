"""Training recipes: config, lr schedules, strategies, custom loop, plots and the trainer.

The callbacks live in `keras_facemargin.callbacks`.

Example:
    >>> from keras_facemargin import training
    >>> cfg = training.get_experiment("ms1mv2", data="/data/faces_emore")   # the KappaFace paper recipe
    >>> training.run(cfg)
"""

from keras_facemargin.training.config import EXPERIMENTS, TrainConfig, get_experiment, loss_names  # noqa: F401
from keras_facemargin.training.custom_loop import CustomLoop  # noqa: F401
from keras_facemargin.training.heads import build_head, head_for_run  # noqa: F401
from keras_facemargin.training.plots import plot_training  # noqa: F401
from keras_facemargin.training.sparse_sgd import RowSparseSGD  # noqa: F401
from keras_facemargin.training.schedules import EpochStepDecay, scaled_lr  # noqa: F401
from keras_facemargin.training.strategy import get_strategy, is_chief, task_info  # noqa: F401
from keras_facemargin.training.trainer import Trainer, epoch_seed, prepare_data, run  # noqa: F401


def __getattr__(name):
    """``LOSSES``: the registered head names, read from the live registry on each access."""
    if name == "LOSSES":
        return loss_names()
    raise AttributeError(f"module 'keras_facemargin.training' has no attribute {name!r}")
