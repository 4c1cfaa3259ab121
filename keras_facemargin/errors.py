"""Typed errors for files read from outside the package (untrusted input).

Every reader of outside data raises, for any bytes it is given, either ``OSError`` (a missing or
unreadable file) or a subclass of :class:`UntrustedFileError` (a ``ValueError``) whose message
names the file, the field / offset / line, and what was expected. One class per format:

==========================  ==============================================================
:class:`BinSetError`        insightface ``.bin`` verification sets
                            (:func:`keras_facemargin.evaluation.bin_sets.load_bin`);
                            ``UnsafeBinError`` (a refused pickle global) is a subclass
:class:`RecordIOError`      RecordIO ``train.idx`` / ``property`` / ``train.rec`` layout;
                            per-record problems are :class:`RecordIORecordError`
                            (also a :class:`BadRecordError`)
:class:`TFRecordError`      TFRecord files; per-record: :class:`TFRecordRecordError`
:class:`ImageFileError`     image files of folders (also a :class:`BadRecordError`)
:class:`PairsFileError`     LFW ``pairs.txt``
:class:`IJBFileError`       IJB-B/C meta files
:class:`MegaFaceFileError`  MegaFace feature files (``.bin``, ``.npy``) and noise lists
:class:`WeightsFileError`   converted ``.pth`` / ``.onnx`` weights; :class:`DlibFileError` (a
                            subclass, with ``.offset``) for dlib ``.dat`` networks
                            (:mod:`keras_facemargin.convert` raises the subclass
                            :class:`WeightsConversionError`, with ``.node``;
                            ``UnsafeWeightsError``, a refused pickle, and
                            ``ExternalDataError`` derive from it)
:class:`ModelFileError`     ``.keras`` models and ``.weights.h5`` files (and the normalisation
                            record inside them; :mod:`keras_facemargin.utils.model_files`);
                            :class:`UnsafeModelError` (a subclass) for code outside the package
                            and Keras
==========================  ==============================================================

Outcomes of the photo-to-verdict API are :class:`FaceVerifierError` subclasses (``reason``,
``file``, ``exit_code``, ``to_dict()``): :class:`ConfigurationError`, :class:`ImageReadError`,
:class:`NoFaceError`, :class:`MultipleFacesError`, :class:`GalleryError`
(and :class:`ExportMetadataError`, a :class:`ConfigurationError`). Training and export
raise :class:`DataSourceError`, :class:`SampleBudgetError`, :class:`ClassShardingError`,
:class:`NonFiniteLossError`, :class:`ParityError` and :class:`PretrainedWeightsError`.

:class:`BadRecordError` (re-exported by :mod:`keras_facemargin.data.errors`) keeps its
``(file, offset, reason, detail)`` signature and message, so code that catches it keeps working.

This module imports nothing from the package, so it can be used without TensorFlow.

Example::

    try:
        load_bin("suspicious.bin")
    except BinSetError as e:
        print(e.file, e.where, e.detail)
"""

from __future__ import annotations

import pickle

__all__ = [
    "UntrustedFileError",
    "BadRecordError",
    "BinSetError",
    "RecordIOError",
    "RecordIORecordError",
    "TFRecordError",
    "TFRecordRecordError",
    "ImageFileError",
    "PairsFileError",
    "IJBFileError",
    "MegaFaceFileError",
    "WeightsFileError",
    "DlibFileError",
    "ModelFileError",
    "UnsafeModelError",
    "WeightsConversionError",
    "ExternalDataError",
    "UnsafeWeightsError",
    "FaceVerifierError",
    "ConfigurationError",
    "ImageReadError",
    "NoFaceError",
    "MultipleFacesError",
    "GalleryError",
    "ExportMetadataError",
    "SampleBudgetError",
    "SparseUpdateError",
    "NonFiniteLossError",
    "DataSourceError",
    "PretrainedWeightsError",
    "ClassShardingError",
    "ParityError",
    "UnsafeBinError",
]


class UntrustedFileError(ValueError):
    """A file read from outside is malformed, inconsistent or over a resource limit.

    The message is ``"<file>: <where>: <detail>"``, or ``"<file>:<line>: <detail>"`` for text
    files.

    Args:
        file: path of the offending file.
        detail: what was found and what was expected.
        where: field or byte offset (``"issame_list"``, ``"byte offset 120"``), or ``None``.
        line: 1-based line number of a text file (sets ``where`` to ``"line N"``).

    Attributes:
        file, detail, where, line: as given (``file`` as a string).
    """

    def __init__(self, file, detail, where=None, line=None):
        self.file = str(file)
        self.detail = str(detail)
        self.line = None if line is None else int(line)
        if self.line is not None:
            self.where = f"line {self.line}"
            loc = f"{self.file}:{self.line}"
        else:
            self.where = None if where is None else str(where)
            loc = self.file if self.where is None else f"{self.file}: {self.where}"
        super().__init__(f"{loc}: {self.detail}")

    def __reduce__(self):  # picklable although __init__ takes several arguments
        return _rebuild, (type(self), self.__dict__.copy(), self.args)


def _rebuild(cls, state, args):
    err = cls.__new__(cls)
    err.__dict__.update(state)
    err.args = args
    return err


class BadRecordError(UntrustedFileError):
    """A corrupt or invalid input record (RecordIO / TFRecord record, image file).

    Args:
        file: path of the file holding the record (or the image path).
        offset: byte offset of the record in ``file`` (``None`` for whole files).
        reason: short machine-readable reason, e.g. ``"bad_magic"``.
        detail: human-readable explanation.

    Attributes:
        file, offset, reason, detail: as given.
    """

    def __init__(self, file, offset, reason, detail=""):
        self.offset = None if offset is None else int(offset)
        self.reason = reason
        UntrustedFileError.__init__(self, file, detail,
                                    None if offset is None else f"byte offset {self.offset}")
        where = self.file if offset is None else f"{self.file} at byte offset {self.offset}"
        self.args = (f"Bad record in {where}: {reason}" + (f" ({detail})" if detail else ""),)


class BinSetError(UntrustedFileError):
    """An insightface ``.bin`` verification set that is not a valid, bounded set."""


class RecordIOError(UntrustedFileError):
    """A RecordIO set (``train.idx``, ``property``, header / identity records) that is malformed."""


class RecordIORecordError(RecordIOError, BadRecordError):
    """One bad record of a ``train.rec`` (a :class:`RecordIOError` and a :class:`BadRecordError`)."""

    __init__ = BadRecordError.__init__


class TFRecordError(UntrustedFileError):
    """TFRecord files that are malformed as a whole (framing, sample indices)."""


class TFRecordRecordError(TFRecordError, BadRecordError):
    """One bad record of a TFRecord file (a :class:`TFRecordError` and a :class:`BadRecordError`)."""

    __init__ = BadRecordError.__init__


class ImageFileError(BadRecordError):
    """An image file that is unreadable, not an admitted format or over the pixel cap."""


class PairsFileError(UntrustedFileError):
    """A malformed LFW ``pairs.txt`` (or a name that leaves the images folder)."""


class IJBFileError(UntrustedFileError):
    """A malformed IJB-B/C meta file."""


class MegaFaceFileError(UntrustedFileError):
    """A malformed MegaFace feature file or noise list."""


class WeightsFileError(UntrustedFileError):
    """A malformed or over-limit ``.pth`` / ``.onnx`` weights file."""


class ModelFileError(WeightsFileError):
    """A ``.keras`` model or ``.weights.h5`` file that is malformed, nested too deep, inconsistent with
    its weights archive or over a size limit, found before anything is built or allocated (see
    :mod:`keras_facemargin.utils.model_files` for the limits); also a normalisation record inside
    one that is not valid, and a model Keras then fails to rebuild. The CLI exits with code 2."""

    @property
    def filename(self):
        """The file (as ``OSError.filename``: what the CLI reports as ``"file"``)."""
        return self.file


class UnsafeModelError(ModelFileError):
    """A ``.keras`` file whose config names a module, class or function outside ``keras_facemargin``
    and Keras (e.g. module ``posix``, class ``system``) or a Python lambda: refused before Keras reads
    the config, so nothing is imported or run."""


class DlibFileError(WeightsFileError):
    """A dlib ``.dat`` network file that is truncated, garbled, over a limit or of another network.

    Args:
        file: path of the ``.dat`` file.
        offset: byte offset where the problem was found.
        detail: what was found and what was expected.

    Attributes:
        offset: as given (an ``int``).

    Example::

        try:
            read_dlib_network("dlib_face_recognition_resnet_model_v1.dat")
        except DlibFileError as e:
            print(e.file, e.offset, e.detail)
    """

    def __init__(self, file, offset, detail):
        self.offset = int(offset)
        WeightsFileError.__init__(self, file, detail, f"byte offset {self.offset}")


class FaceVerifierError(ValueError):
    """Base of the outcomes that are not a verdict (see the module docstring).

    Attributes:
        reason: short machine-readable reason (``"no_face"``, ``"unreadable"``, ...).
        file: the image / gallery path concerned (``"<array>"`` for arrays, ``None`` if none).
        detail: human-readable explanation.
        exit_code: the CLIs' process exit code for this outcome.
    """

    exit_code = 2

    def __init__(self, reason, detail, file=None, **extra):
        self.reason = reason
        self.detail = detail
        self.file = None if file is None else str(file)
        self.extra = extra
        super().__init__(f"{self.file}: {detail}" if self.file else detail)

    def to_dict(self) -> dict:
        """``{"status": "error", "error": reason, "file", "message", ...}`` (JSON-friendly)."""
        return {"status": "error", "error": self.reason, "file": self.file, "message": str(self), **self.extra}


class ConfigurationError(FaceVerifierError):
    """No model, no threshold for the requested FAR, or another setup problem (exit code 2)."""


class ImageReadError(FaceVerifierError):
    """The input is not a readable image: ``reason`` is ``not_found``, ``not_an_image`` or ``unreadable``."""

    exit_code = 5


class _ImageNotFoundError(ImageReadError, FileNotFoundError):
    """`ImageReadError` with ``reason="not_found"``; also a ``FileNotFoundError``."""

    def __init__(self, reason, detail, file=None, **extra):
        ImageReadError.__init__(self, reason, detail, file, **extra)


class NoFaceError(FaceVerifierError):
    """No face was detected in the image (exit code 3)."""

    exit_code = 3


class MultipleFacesError(FaceVerifierError):
    """Several faces and ``face_policy="error"`` (exit code 4); ``extra["faces"]`` lists them."""

    exit_code = 4


class GalleryError(FaceVerifierError):
    """A gallery file that is not one, is damaged, belongs to another model, or could not be written (exit code 6)."""

    exit_code = 6


class ExportMetadataError(ConfigurationError):
    """The metadata of an exported model (``m.tflite.json``, ``m.onnx.json``,
    ``saved_model_dir/keras_facemargin.json``) is missing, malformed, over its size / depth bounds, or
    does not describe the file beside it (exit code 2).

    ``reason`` is ``"metadata_missing"``, ``"metadata_invalid"`` or ``"metadata_mismatch"`` (the
    sha256 or the input / output shape recorded is not the exported file's); ``file`` is the
    metadata file (or the model file when the model itself is absent).

    Example::

        try:
            FaceVerifier("m.tflite")
        except ExportMetadataError as e:
            print(e.reason, e.file)
    """


class SampleBudgetError(ValueError):
    """The global batch holds more distinct classes than `PartialFC` samples (`num_sample`)."""


class SparseUpdateError(ValueError):
    """`RowSparseSGD` got a dense gradient for a row-sparse class-centre matrix (non-TensorFlow backend)."""


class NonFiniteLossError(RuntimeError):
    """Raised by `NaNGuard` when the training loss becomes NaN or infinite."""


class DataSourceError(ValueError):
    """A training-data path or option that is not what the trainer can read (names the path)."""


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are unavailable, unreachable or fail their hash check."""


class ClassShardingError(ValueError):
    """The heads cannot be split over the devices (class count not divisible, head already built)."""


class ParityError(AssertionError):
    """An exported model is further from Keras than its threshold allows."""


class UnsafeBinError(BinSetError, pickle.UnpicklingError):
    """A ``.bin`` pickle references a global or opcode the restricted unpickler does not admit.

    A :class:`~keras_facemargin.errors.BinSetError` (a ``ValueError``) and a
    ``pickle.UnpicklingError``.
    """


class WeightsConversionError(WeightsFileError):
    """An insightface weights file (``.pth``/``.onnx``) or state dict that cannot be converted, or is
    malformed or over a limit (raised by :mod:`keras_facemargin.convert`).

    A :class:`WeightsFileError` (so an :class:`UntrustedFileError` and a ``ValueError``). The
    message names the file and, for ONNX graphs, the node that does not fit; ``.source`` /
    ``.file`` hold the file (``"<state dict>"`` for an in-memory state dict), ``.node`` the ONNX
    node name (or None) and ``.where`` the node, archive entry or tensor.

    Args:
        message: the full message (starting with the file name when there is one).
        source: the file (or ``"<onnx.ModelProto>"``).
        node: the ONNX node's name.
        where: archive entry / tensor name (defaults to ``node 'name'``).

    Example::

        try:
            convert_insightface("w600k_r50.onnx")
        except WeightsConversionError as e:
            print(e.source, e.node, e.where)
    """

    def __init__(self, message, source=None, node=None, where=None):
        message = str(message)
        self.source = None if source is None else str(source)
        self.node = node
        file = self.source if self.source is not None else "<state dict>"
        detail = message[len(file) + 2:] if message.startswith(file + ": ") else message
        if where is None and node is not None:
            where = f"node {node!r}"
        WeightsFileError.__init__(self, file, detail, where)
        self.args = (message,)


class ExternalDataError(WeightsConversionError):
    """An ONNX model keeps weights in external files and the caller did not allow reading them, or
    an external location is unsafe (outside the model's folder, missing, or too short)."""


class UnsafeWeightsError(WeightsConversionError, pickle.UnpicklingError):
    """The pickle of a ``.pth`` names a global or opcode the restricted reader does not admit, or a
    tensor view that is out of its storage's bounds, stride-0 or overlapping (never executed or
    allocated). A :class:`WeightsConversionError` and a ``pickle.UnpicklingError``."""
