"""Worker of tests/test_folder_jobs.py: one folder job over a hostile tree, in a limited subprocess.

``python tests/folder_jobs_worker.py JOB TREE`` runs JOB (``align``, ``train``, ``identity_folder``,
``folder_dataset``, ``gallery``) on the tree the test built, and prints ``RESULT <json>`` with what
the job reported (file names escaped with ``display_path``), the job's seconds and the process's peak
RSS. ``python tests/folder_jobs_worker.py cli ARGS...`` runs ``kfm ARGS`` and reports the peak RSS on
stderr (``PEAK_RSS_MB n``). The test sets the address-space and time limits.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_mb():
    from keras_facemargin.utils.memory import peak_rss_mb  # not ru_maxrss: it inherits the test worker's

    return int(peak_rss_mb())


def esc(path):
    from keras_facemargin.utils.folder_files import display_path

    return display_path(path)


class StubDetector:
    """One centred face with fixed landmarks in every image (no model)."""

    def detect_batch(self, images):
        import numpy as np

        lm = np.array([[20, 25], [40, 25], [30, 35], [22, 45], [38, 45]], float)
        return [[{"box": (0.0, 0.0, 60.0, 60.0), "confidence": 1.0, "landmarks": lm}] for _ in images]


class StubVerifier:
    """What `Gallery.build` needs of a FaceVerifier; photos are read with the verifier's real reader."""

    def faces(self, paths, errors="return"):
        import types

        from keras_facemargin.errors import FaceVerifierError
        from keras_facemargin.inference.verifier import read_image

        out = []
        for p in paths:
            try:
                rgb, _ = read_image(p)
            except FaceVerifierError as e:
                out.append(e)
                continue
            out.append(types.SimpleNamespace(crop=rgb[:8, :8], file=str(p), source=str(p)))
        return out

    def embed_crops(self, crops):
        import numpy as np

        e = crops.reshape(len(crops), -1, 3).mean(1).astype(np.float64) + 1.0
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def config(self):
        return {"model": "stub", "embedding_dim": 3, "image_size": 8, "normalization": None, "flip": False}

    def probe_embedding(self):
        return [1.0, 0.0, 0.0]


def job_align(tree):
    from keras_facemargin.data.align import align_folder, write_report

    report = align_folder(os.path.join(tree, "raw"), os.path.join(tree, "aligned"), detector=StubDetector(),
                          progress=False)
    write_report(report, os.path.join(tree, "report.json"))
    with open(os.path.join(tree, "report.json"), encoding="utf-8") as f:
        json.load(f)  # the report is valid JSON whatever the names hold
    return {"counts": report["counts"], "aligned": sorted(esc(i["path"]) for i in report["aligned"]),
            "failed": {esc(i["path"]): i.get("reason") or i["error"].split(":")[0] for i in report["unreadable"]},
            "no_face": sorted(esc(i["path"]) for i in report["no_face"])}


def job_train(tree):
    from keras_facemargin.data.errors import BadRecordReport
    from keras_facemargin.data.training_set import load_training_set

    ts = load_training_set([os.path.join(tree, "train")])
    report = BadRecordReport()
    ds = ts.make_dataset(batch_size=4, seed=0, report=report, drop_remainder=False, augment_flip=False)
    seen = sum(int(x["images"].shape[0]) for x, _ in ds)
    ts.write_report(os.path.join(tree, "run"))
    with open(os.path.join(tree, "run", "data_report.json"), encoding="utf-8") as f:
        json.load(f)
    return {"classes": sorted(esc(n) for n in ts.class_names), "samples": ts.num_samples, "seen": seen,
            "up_front": {esc(os.path.relpath(e.file, os.path.join(tree, "train"))): e.reason for e in ts.bad_records},
            "while_training": {esc(os.path.relpath(k, os.path.join(tree, "train"))): 1
                               for k in _examples(report)}}


def _examples(report):
    out = []
    for e in report.examples:
        out.append(e["file"] if isinstance(e, dict) else getattr(e, "file", str(e)))
    return out


def job_identity_folder(tree):
    from keras_facemargin.data.identity_folders import load_identity_folder

    d = load_identity_folder(os.path.join(tree, "train"), image_size=16, on_error="skip")
    return {"classes": sorted(esc(n) for n in d.class_names), "images": int(len(d.labels)),
            "failed": {esc(p): err.split(":")[0] for p, err in d.unreadable}}


def job_folder_dataset(tree):
    from keras_facemargin.data.formats.folders import make_folder_dataset

    ds = make_folder_dataset(os.path.join(tree, "train"), 4, image_size=16, drop_remainder=False, shuffle=False)
    seen = sum(int(x["images"].shape[0]) for x, _ in ds)
    return {"seen": seen, "by_reason": dict(ds.bad_records.by_reason)}


def job_gallery(tree):
    from keras_facemargin.inference.gallery import Gallery

    g = Gallery.build(StubVerifier(), os.path.join(tree, "people"))
    root = os.path.join(tree, "people")
    return {"identities": sorted(esc(n) for n in g.identities), "counts": dict(zip(map(esc, g.identities),
                                                                                  map(int, g.counts))),
            "skipped": {esc(os.path.relpath(s["path"], root)): s["reason"] for s in g.skipped}}


def main():
    if sys.argv[1] == "cli":
        import atexit

        atexit.register(lambda: print(f"PEAK_RSS_MB {peak_mb()}", file=sys.stderr, flush=True))
        from keras_facemargin.cli import main as kfm

        sys.exit(kfm(sys.argv[2:]))
    job, tree = sys.argv[1], sys.argv[2]
    fn = globals()[f"job_{job}"]
    start = time.perf_counter()
    result = fn(tree)
    result.update(seconds=time.perf_counter() - start, peak_mb=peak_mb())
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
