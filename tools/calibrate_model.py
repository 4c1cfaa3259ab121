"""Calibrate a zoo model's decision thresholds on the held-out CelebA identities (never LFW).

Prints the JSON of :func:`keras_facemargin.inference.calibrate.calibrate_verifier`: thresholds at
FAR 1e-2 / 1e-3 / 1e-4 and the best-balanced-accuracy operating point ("accuracy"), the rates they
give and the pair counts, to be stored as the registry entry's ``thresholds`` / ``calibration``.

    python tools/calibrate_model.py dlib_resnet_v1 [--data-dir ../shared/data]
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a zoo name (keras_facemargin.list_models())")
    parser.add_argument("--data-dir", default=os.environ.get("KFM_DATA_DIR", str(Path(__file__).resolve().parents[2]
                                                                             / "shared" / "data")))
    args = parser.parse_args(argv)
    import keras_facemargin as kfm
    from keras_facemargin.inference.calibrate import calibrate_verifier

    cal = calibrate_verifier(kfm.FaceVerifier(args.model, threshold=0.5), args.data_dir)
    print(json.dumps(cal, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
