"""Training plots: loss, mean kappa per epoch, margin histogram."""

from pathlib import Path

import numpy as np


def plot_training(history, path, margins=None, title=None):
    """PNG of the loss, the mean kappa per epoch and the margin histogram (KappaFace Fig. 5).

    Args:
        history: `{key: [value per epoch]}` with `loss` and, for KappaFace, `kappa_mean`.
        path: PNG path.
        margins: per-class margins `psi * m0` at the last epoch (None: panel omitted).
        title: figure title.

    Returns:
        The path written, or None when matplotlib is not installed (a message is printed).

    Example:
        >>> plot_training(read_history("run/history.jsonl"), "run/training.png", head.margins())
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the training plot (pip install matplotlib).")
        return None
    panels = [("loss", "training loss")]
    if history.get("kappa_mean"):
        panels.append(("kappa_mean", "mean kappa"))
    if margins is not None:
        panels.append(("margins", "margin psi * m0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    epochs = history.get("epoch") or list(range(len(history.get("loss", []))))
    for ax, (key, label) in zip(axes[0], panels):
        if key == "margins":
            ax.hist(np.asarray(margins).ravel(), bins=40, color="tab:orange")
            ax.set_xlabel("margin (last epoch)")
            ax.set_ylabel("classes")
        else:
            ax.plot([e + 1 for e in epochs], history.get(key, []), marker="o")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
