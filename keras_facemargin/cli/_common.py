"""What every `kfm` subcommand shares: options, JSON output, exit codes, quiet logs, model loading.

Exit codes (every subcommand; ``EXIT_CODES``):

====  ==========================================================================================
0     a decision (same / different, known / unknown), or the work was done
1     a check failed: export or conversion parity below its threshold, ``align --strict``
2     configuration or usage: bad option, unknown model, missing model or data file
3     no face found in a photo
4     several faces in a photo with ``--face-policy error``
5     unreadable image: missing, not an image, corrupt or too large
6     gallery: damaged, built with another model, or no such identity
====  ==========================================================================================

A user error never ends in a Python traceback: the typed errors of :mod:`keras_facemargin.errors`
(and ``FileNotFoundError`` / ``ValueError``) become a one-line message on stderr, or with
``--json`` a ``{"status": "error", "error": REASON, "file", "message"}`` object on stdout.

Example::

    from keras_facemargin.cli import _common
    _common.configure_logging(verbose=False)     # before TensorFlow is imported
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from keras_facemargin.utils.folder_files import display_path

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_NO_FACE, EXIT_MULTIPLE_FACES, EXIT_UNREADABLE, EXIT_GALLERY = range(7)
EXIT_CODES = {EXIT_OK: "a decision, or the work was done", EXIT_CHECK_FAILED: "a parity / --strict check failed",
              EXIT_USAGE: "configuration or usage error", EXIT_NO_FACE: "no face found",
              EXIT_MULTIPLE_FACES: "several faces with --face-policy error", EXIT_UNREADABLE: "unreadable image",
              EXIT_GALLERY: "gallery damaged, of another model, or no such identity"}
EXIT_EPILOG = "exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."
#: Files `kfm embed` / `gallery add` / `identify` take from a folder (recursively, hidden files skipped).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jp2")
_EXPORTED_SUFFIXES = (".tflite", ".onnx")


def configure_logging(verbose: bool = False) -> None:
    """Quiet TensorFlow / absl / Keras logs unless ``verbose`` (call before TensorFlow is imported).

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (kept if the environment sets it; ``0`` with ``verbose``), the
    absl verbosity and the ``tensorflow`` logger level, hides the frameworks' Python warnings, and
    imports Keras with stderr silenced (`import_keras_quietly`) if it is not imported yet.
    """
    import logging
    import warnings

    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for module in ("keras", "tensorflow", "tf2onnx", "absl", "mtcnn", "google"):
            warnings.filterwarnings("ignore", module=module)
        import_keras_quietly()
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("tensorflow").setLevel(level)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)


def import_keras_quietly() -> None:
    """Import Keras without TensorFlow's start-up banner (:mod:`keras_facemargin.utils.tf_logs`)."""
    from keras_facemargin.utils.tf_logs import import_keras_filtered

    import_keras_filtered()


def common_options(json_file: bool = False) -> argparse.ArgumentParser:
    """The parent parser of every subcommand: ``--json``, ``--verbose``, ``--no-progress``.

    Args:
        json_file: ``--json [FILE]``: without FILE, JSON on stdout; with FILE, also written there
            (``export`` / ``evaluate``, whose tools took ``--json FILE``).
    """
    parent = argparse.ArgumentParser(add_help=False)
    if json_file:
        parent.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                            help="print the result as one JSON object on stdout; with FILE, also write it there")
    else:
        parent.add_argument("--json", action="store_true", help="print one JSON object per result on stdout")
    parent.add_argument("--verbose", action="store_true", help="show TensorFlow's and Keras' logs")
    parent.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parent


def summary(doc) -> str:
    """The first paragraph of a module docstring, without its leading ```kfm ...`: `` usage."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return text.split("`: ", 1)[1] if text.startswith("`") and "`: " in text else text


def add_parser(sub, name, module_doc, parents, **kwargs):
    """``sub.add_parser(name)``: the module docstring as description, the exit codes as epilog."""
    return sub.add_parser(name, parents=parents, help=kwargs.pop("help", summary(module_doc)),
                          description=kwargs.pop("description", module_doc.strip()), epilog=EXIT_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_model_arguments(parser, verdict: bool = True) -> None:
    """``--model`` / ``--weights`` / ``--face-policy`` / ``--min-confidence`` (+ the threshold options)."""
    parser.add_argument("--model", default=None,
                        help="a zoo name (kfm models), a .keras file, or an exported model (.tflite, .onnx, "
                             "SavedModel directory, with the metadata kfm export wrote beside it); default: the "
                             "registry's default model")
    parser.add_argument("--weights", default=None, help="local weights file for a zoo --model")
    if verdict:
        parser.add_argument("--threshold", type=float, default=None,
                            help="cosine threshold (same iff score > T); default: the model's calibrated one")
        parser.add_argument("--far", type=float, default=None,
                            help="use the model's threshold calibrated at this false accept rate (1e-2, 1e-3, 1e-4) "
                                 "instead of its best-accuracy one")
    parser.add_argument("--face-policy", default="central", choices=["central", "largest", "best", "error"],
                        help="face to use when a photo has several: large-and-central (default), largest box, "
                             "best detector confidence, or error (refuse, exit 4)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="ignore detections below this MTCNN confidence (default 0)")


def register_keras_classes() -> None:
    """Import the package's classes a ``.keras`` file may name (``FaceRecognizer``; the package imports lazily)."""
    import keras_facemargin.models  # noqa: F401


def is_exported_model(model) -> bool:
    """True for a ``.tflite`` / ``.onnx`` path or a SavedModel folder."""
    if model is None:
        return False
    path = Path(model)
    return str(model).lower().endswith(_EXPORTED_SUFFIXES) or (path.is_dir() and (path / "saved_model.pb").is_file())


def build_verifier(args, need_threshold: bool = True):
    """A :class:`~keras_facemargin.FaceVerifier` from the `add_model_arguments` options.

    Args:
        args: parsed options.
        need_threshold: ``False`` for embedding only (``embed``, ``gallery add``): a model without a
            calibrated threshold is accepted (the threshold is then unused).

    Raises:
        ConfigurationError: unknown model, no threshold; ExportMetadataError (a ConfigurationError): an
            exported model (.tflite / .onnx / SavedModel) without valid metadata beside it.
    """
    from keras_facemargin.data import MTCNNDetector
    from keras_facemargin.errors import ConfigurationError
    from keras_facemargin.inference.verifier import FaceVerifier

    register_keras_classes()
    detector = MTCNNDetector(min_confidence=args.min_confidence) if args.min_confidence > 0 else None
    options = dict(far=getattr(args, "far", None), detector=detector, face_policy=args.face_policy,
                   weights=args.weights)
    try:
        return FaceVerifier(args.model, threshold=getattr(args, "threshold", None), **options)
    except ConfigurationError as err:
        if err.reason != "no_threshold" or need_threshold:
            raise
        return FaceVerifier(args.model, threshold=0.0, **options)  # embeddings only: the threshold is unused


def emit(obj) -> None:
    """Print ``obj`` as one line of JSON on stdout."""
    print(json.dumps(obj, default=_json_default), flush=True)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def error_to_exit(error, args=None) -> int:
    """Report a user error (JSON on stdout with ``--json``, else a line on stderr); its exit code.

    :class:`~keras_facemargin.errors.FaceVerifierError` carries its own code (3 no face, 4 several
    faces, 5 unreadable image, 6 gallery, 2 configuration); missing or unwritable files (``OSError``),
    bad values, weights that cannot be loaded and damaged input files are configuration errors (2).
    Anything else is a bug and is re-raised.
    """
    import pickle

    from keras_facemargin.errors import FaceVerifierError, PretrainedWeightsError

    if isinstance(error, FaceVerifierError):
        report, code = error.to_dict(), error.exit_code
        if report.get("file") is not None and display_path(report["file"]) != report["file"]:
            # a name with newlines or bytes that are not UTF-8: shown escaped, one line of UTF-8
            report["file"] = display_path(report["file"])
            report["message"] = f"{report['file']}: {error.detail}"
    elif isinstance(error, (PretrainedWeightsError, OSError, ValueError, pickle.UnpicklingError)):
        report = {"status": "error", "error": "configuration", "file": getattr(error, "filename", None),
                  "message": str(error)}
        code = EXIT_USAGE
    else:
        raise error
    if args is not None and getattr(args, "json", None):
        emit(report)
    else:
        print(f"kfm: error: {_one_line(report['message'])}", file=sys.stderr)
    return code


def _one_line(text) -> str:
    """``text`` without line breaks or undecodable bytes (escaped), for one line on a terminal."""
    return display_path(text).replace("\\\\", "\\")


def reason_counts(failures) -> str:
    """``"2 not_a_file, 1 no_face"``: failures (tuples whose second item, or objects whose ``reason``, is
    the reason code) counted by reason, most frequent first."""
    from collections import Counter

    counts = Counter(f[1] if isinstance(f, tuple) else f.reason for f in failures)
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


def add_follow_links(parser) -> None:
    """``--follow-links``: read symbolic links to photos outside the folders given (refused by default)."""
    parser.add_argument("--follow-links", action="store_true",
                        help="in folders, also read symbolic links to files outside the folder (default: such "
                             "links are refused and reported as outside_root)")


def expand_photos(paths, refused=None, follow_links=False) -> list:
    """``paths`` with every folder replaced by its image files (recursively, sorted; hidden ones skipped).

    A path that is not a folder is kept as it is (a missing file is then reported per photo, exit 5).
    In a folder, an entry with an image suffix that is not a regular file inside the folder -- a FIFO,
    socket or device, a dangling or looping symbolic link, a link to a folder, a link whose target
    lies outside the folder -- is never opened: it is left out, and with ``refused`` (a list) its
    :class:`~keras_facemargin.errors.ImageReadError` (reason ``not_a_file`` / ``outside_root`` /
    ``unreadable``, exit 5) is appended there for the caller to report. ``follow_links``
    (``--follow-links``) accepts links to regular files outside the folder.

    Raises:
        ValueError: a folder holds no image file (and no refused entry).
    """
    from keras_facemargin.errors import ImageReadError
    from keras_facemargin.utils.folder_files import list_tree

    photos = []
    for p in map(Path, paths):
        if p.is_dir():
            files, bad = list_tree(p, suffixes=IMAGE_SUFFIXES, follow_links=follow_links)
            if not files and not bad:
                raise ValueError(f"{display_path(p)}: no image file ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
            photos += sorted(str(p / rel) for rel in files)  # the order of earlier versions
            if refused is not None:
                refused += [ImageReadError(r.reason, r.detail, str(p / r.path)) for r in bad]
        else:
            photos.append(str(p))
    return photos


def progress_bar(args, total, desc, unit="img"):
    """A tqdm bar on stderr, disabled by ``--no-progress`` and for a single item."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=bool(getattr(args, "no_progress", False)) or total <= 1,
                file=sys.stderr)


def embed_photos(verifier, photos, args, desc="embed"):
    """Detect, align and embed ``photos`` in chunks of ``args.batch_size``, with a progress bar.

    Returns:
        ``[(photo, face, embedding)]`` in input order: a :class:`~keras_facemargin.inference.results.Face`
        and its float64 ``(d,)`` unit-norm embedding, or the photo's
        :class:`~keras_facemargin.errors.FaceVerifierError` (no face, unreadable, several faces with
        ``--face-policy error``) and ``None``.
    """
    import numpy as np

    from keras_facemargin.errors import FaceVerifierError

    out, chunk = [], max(1, int(getattr(args, "batch_size", None) or 16))
    with progress_bar(args, len(photos), desc) as bar:
        for start in range(0, len(photos), chunk):
            part = photos[start:start + chunk]
            faces = verifier.faces(part, errors="return")
            good = [i for i, f in enumerate(faces) if not isinstance(f, FaceVerifierError)]
            embeddings = verifier.embed_crops(np.stack([faces[i].crop for i in good])) if good else []
            found = dict(zip(good, embeddings))
            out += [(p, f, found.get(i)) for i, (p, f) in enumerate(zip(part, faces))]
            bar.update(len(part))
    return out
