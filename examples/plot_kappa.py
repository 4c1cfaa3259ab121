"""KappaFace's per-class state of a finished run, as in the paper's Fig. 5 and Fig. 7.

Reads ``head_state.npz`` (kappa, psi, class counts at the end of training) and ``history.csv``
(``kappa_mean`` per epoch, logged by ``KappaUpdater``) of an ``examples/celeba_lfw.py`` run and
draws three panels: the margin ``psi_c * m0`` against kappa_c, the margin against the class's
image count, and the mean kappa per epoch.

    python examples/plot_kappa.py runs/real_faces/<kappaface run> --output docs/kappa_margins.png
"""

import argparse
import csv
import json
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (head_state.npz, history.csv, results.json)")
    p.add_argument("--output", required=True, help="PNG file")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in map(Path, args.runs):
        state = np.load(run / "head_state.npz")
        if "psi" not in state:
            raise SystemExit(f"{run}/head_state.npz has no psi: not a KappaFace run.")
        res = json.loads((run / "results.json").read_text())
        m0 = float(res["head_config"]["margin"])
        label = f"{res['loss']} ({res['train_set']}, seed {res['seed']})"
        margin = state["psi"] * m0
        ax[0].scatter(state["kappa"], margin, s=4, alpha=0.5, label=label)
        ax[1].scatter(state["class_counts"], margin, s=4, alpha=0.5, label=label)
        with open(run / "history.csv") as f:
            rows = list(csv.DictReader(f))
        ax[2].plot([int(r["epoch"]) + 1 for r in rows], [float(r["kappa_mean"]) for r in rows], marker="o",
                   label=label)
    ax[0].set(xlabel="kappa_c (vMF concentration, eq. 3)", ylabel="margin psi_c * m0",
              title="margin against concentration", xscale="log")
    ax[1].set(xlabel="images of the class", ylabel="margin psi_c * m0", title="margin against class size",
              xscale="log")
    ax[2].set(xlabel="epoch", ylabel="mean kappa", title="mean kappa per epoch (cf. Fig. 5)", yscale="log")
    for a in ax:
        a.grid(alpha=0.3)
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
