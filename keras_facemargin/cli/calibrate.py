"""`kfm calibrate NAME`: a zoo model's decision thresholds, on held-out CelebA identities (never LFW).

Prints the JSON of :func:`keras_facemargin.inference.calibrate.calibrate_verifier`: thresholds at
FAR 1e-2 / 1e-3 / 1e-4 and the best-balanced-accuracy operating point ("accuracy"), the rates they
give and the pair counts, to be stored as the registry entry's ``thresholds`` / ``calibration``.
Needs ``celeba_identities/`` under ``--data-dir`` (default ``$KFM_DATA_DIR``).

Example::

    kfm calibrate dlib_resnet_v1 --data-dir ../shared/data
"""

from __future__ import annotations

import json

from keras_facemargin.cli import _common

__all__ = ["register", "run_calibrate"]


def register(sub) -> None:
    """Add ``calibrate`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "calibrate", __doc__, [_common.common_options()])
    p.add_argument("model", help="a zoo name (kfm models)")
    p.add_argument("--data-dir", default=None, help="folder holding celeba_identities/ (default $KFM_DATA_DIR)")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    """Calibrate and print the thresholds."""
    import keras_facemargin as kfm
    from keras_facemargin.export.parity import default_data_dir
    from keras_facemargin.inference.calibrate import calibrate_verifier

    cal = calibrate_verifier(kfm.FaceVerifier(args.model, threshold=0.5), args.data_dir or default_data_dir())
    if args.json:
        _common.emit(cal)
    else:
        print(json.dumps(cal, indent=1))
    return _common.EXIT_OK
