"""Markdown tables of finished ``examples/celeba_lfw.py`` runs (the tables of docs/results.md).

One row per (train set, loss); with several seeds, each figure is the mean over seeds and the
per-seed values follow in brackets. Columns: held-out-identity selection accuracy, LFW 10-fold
accuracy (mean ± std over folds), LFW TAR@FAR=1e-3, final training loss, the ArcFace paper's
angle statistics (degrees) and the training time.

    python examples/summarize_real_faces.py runs/real_faces
"""

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def _fmt(values, scale=100.0, digits=2):
    vals = [scale * v for v in values]
    mean = sum(vals) / len(vals)
    text = f"{mean:.{digits}f}"
    if len(vals) > 1:
        text += " (" + ", ".join(f"{v:.{digits}f}" for v in vals) + ")"
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder of run folders")
    args = p.parse_args(argv)
    groups = defaultdict(list)
    for res_file in sorted(Path(args.root).glob("*/results.json")):
        r = json.loads(res_file.read_text())
        with open(res_file.parent / "history.csv") as f:
            rows = list(csv.DictReader(f))
        r["final_loss"] = float(rows[-1]["loss"]) if rows else float("nan")
        r["epochs_done"] = len(rows)
        groups[(r["train_set"], r["loss"])].append(r)
    print("| train set | loss | seeds | held-out acc. (%) | LFW acc. (%) | LFW TAR@FAR=1e-3 (%) | final loss | "
          "W-EC | W-Inter | Intra | Inter |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (train_set, loss), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r["seed"])
        lfw = [r["lfw_center"] for r in runs]
        ang = [r["angles_deg"] for r in runs]
        lfw_std = sum(x["accuracy_std"] for x in lfw) / len(lfw)
        print(f"| {train_set} | `{loss}` | {','.join(str(r['seed']) for r in runs)} | "
              f"{_fmt([r['val_accuracy_mean'] for r in runs])} | "
              f"{_fmt([x['accuracy_mean'] for x in lfw])} ± {100 * lfw_std:.2f} | "
              f"{_fmt([x['tar_at_far']['0.001'] for x in lfw])} | "
              f"{_fmt([r['final_loss'] for r in runs], 1.0, 3)} | "
              + " | ".join(_fmt([a.get(k, float('nan')) for a in ang], 1.0, 1) for k in ("W-EC", "W-Inter", "Intra", "Inter"))
              + " |")


if __name__ == "__main__":
    main()
