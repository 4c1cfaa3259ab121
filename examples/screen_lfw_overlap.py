"""Screen training identities for people who are also in LFW, with a trained embedder.

``celeba_identities/lfw_overlap_candidates.tsv`` covers only that folder's 790 identities; the other
identities of ``celeba_align_10k`` were never compared with LFW. This script embeds every image of
the given training roots and every LFW image (centre crop, flip-sum), forms per-identity
centroids, and lists, for each training identity, its nearest LFW identity by centroid cosine.
It writes ``<output>.tsv`` (all identities, sorted by similarity) and prints how many exceed
thresholds calibrated on LFW itself: the 99.9th and 99th percentiles of the centroid similarity
between *different* LFW identities (the same-person similarity a centroid pair reaches is
reported for LFW identities split into two halves).

    python examples/screen_lfw_overlap.py runs/real_faces/<run>/model.keras --output docs/overlap_screen
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_DATA_DIR = os.environ.get("KFM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def _centroids(emb, labels):
    import numpy as np

    c = np.zeros((labels.max() + 1, emb.shape[1]))
    np.add.at(c, labels, emb)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a FaceRecognizer .keras file")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--roots", nargs="+", default=None, help="training roots (default: celeba_align_10k/images)")
    p.add_argument("--output", required=True, help="output prefix (.tsv is added)")
    args = p.parse_args(argv)
    import keras
    import numpy as np

    import keras_facemargin  # noqa: F401
    from keras_facemargin.data import load_identity_folders, read_identity_list
    from keras_facemargin.data.identity_folders import load_identity_folder
    from keras_facemargin.data.lfw import LFW_CENTER_CROP_BOX
    from keras_facemargin.evaluation.verification import embed_images

    base = Path(args.data_dir)
    model = keras.saving.load_model(args.model, compile=False)
    size = int(model.backbone.input_shape[1])
    roots = args.roots or [base / "celeba_align_10k" / "images"]
    screened = set(read_identity_list(base / "celeba_identities" / "lfw_overlap_candidates.tsv"))
    listed = {d.name for sub in ("color_arcface112", "gray_arcface112")
              for d in (base / "celeba_identities" / sub).iterdir()}
    train = load_identity_folders(roots, image_size=size)
    lfw = load_identity_folder(base / "lfw" / "images", image_size=size, crop=LFW_CENTER_CROP_BOX)
    ct = _centroids(embed_images(model.embedder, train.images), train.labels)
    lfw_emb = embed_images(model.embedder, lfw.images)
    cl = _centroids(lfw_emb, lfw.labels)
    # calibration on LFW itself: different-identity centroid similarities, and split-half same-identity ones
    rng = np.random.default_rng(0)
    multi = np.flatnonzero(lfw.class_counts >= 2)
    sims = cl @ cl.T
    np.fill_diagonal(sims, -1)
    pick = rng.choice(len(cl), size=min(2000, len(cl)), replace=False)
    impostor = sims[np.ix_(pick, pick)][np.triu_indices(len(pick), 1)]
    t999, t99 = np.quantile(impostor, 0.999), np.quantile(impostor, 0.99)
    genuine = []
    for c in multi:
        rows = rng.permutation(np.flatnonzero(lfw.labels == c))
        h = len(rows) // 2
        a, b = lfw_emb[rows[:h]].sum(0), lfw_emb[rows[h:]].sum(0)
        genuine.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    genuine = np.asarray(genuine)
    s = ct @ cl.T
    best = s.argmax(1)
    best_sim = s[np.arange(len(ct)), best]
    order = np.argsort(-best_sim)
    out = Path(args.output + ".tsv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.write("celeba_identity\tnearest_lfw_name\tcentroid_cosine\ttrain_images\tlfw_images\tin_candidate_list\t"
                "in_celeba_identities\n")
        for i in order:
            f.write(f"{train.class_names[i]}\t{lfw.class_names[best[i]]}\t{best_sim[i]:.4f}\t{train.class_counts[i]}\t"
                    f"{lfw.class_counts[best[i]]}\t{train.class_names[i] in screened}\t{train.class_names[i] in listed}\n")
    unscreened = np.asarray([n not in listed for n in train.class_names])
    print(f"{len(ct)} training identities ({unscreened.sum()} not in celeba_identities, i.e. never screened); "
          f"{len(cl)} LFW identities")
    print(f"LFW centroid cosine, different identities: 99th pct {t99:.3f}, 99.9th pct {t999:.3f}; "
          f"same identity split in halves ({len(genuine)} identities): median {np.median(genuine):.3f}, "
          f"10th pct {np.quantile(genuine, 0.1):.3f}")
    for name, t in (("99.9th", t999), ("99th", t99)):
        hit = best_sim > t
        print(f"above the {name} impostor percentile ({t:.3f}): {hit.sum()} identities, {np.sum(hit & unscreened)} of "
              f"them unscreened, {np.sum(hit & np.isin(train.class_names, list(screened)))} already in the candidate list")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
