"""TensorFlow's start-up banner, filtered out of stderr when the package first imports Keras.

TensorFlow >= 2.19 writes absl lines at import ("All log messages before absl::InitializeLog()",
"oneDNN custom operations are on", "This TensorFlow binary is optimized to use ...") whatever
``TF_CPP_MIN_LOG_LEVEL`` says (tensorflow/tensorflow#100442). :func:`import_keras_filtered` imports
Keras with the process's stderr (file descriptor 2) captured, then writes back every captured
line that is not one of those banner lines: warnings and errors still reach the user.
``KFM_TF_LOGS=1`` turns the filter off.

Example::

    from keras_facemargin.utils.tf_logs import import_keras_filtered
    import_keras_filtered()          # then `import keras` is silent
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

#: Lines TensorFlow prints at every start, independent of what the program does.
BANNER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|oneDNN custom operations are on|"
    r"cpu_feature_guard\.cc|This TensorFlow binary is optimized|To enable the following instructions|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"TF-TRT Warning|Could not find cuda drivers|cuda_executor|Unable to register cuBLAS")


def import_keras_filtered() -> None:
    """Import Keras (and TensorFlow when it is the backend) without TensorFlow's start-up banner.

    A no-op when Keras is already imported, when ``KFM_TF_LOGS=1``, or when file descriptor 2
    cannot be duplicated. Lines that are not banner lines are written back to stderr, and an
    import error propagates after stderr is restored.
    """
    if "keras" in sys.modules or os.environ.get("KFM_TF_LOGS") == "1":
        return
    with filtered_stderr(BANNER):
        import keras  # noqa: F401

#: Native INFO / WARNING lines of TensorFlow's converters and runtimes (absl's ``I0000 00:00:... file.cc:N]``
#: prefix, TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate"): progress chatter, not problems.
NATIVE_CHATTER = re.compile(r"^(?:[IW]\d{4} \d\d:\d\d:\d\d?[\d.]* +\d+ [\w./-]+\.cc:\d+\]|INFO: )")


class filtered_stderr:
    """Context manager: lines matching ``pattern`` kept off stderr (file descriptor 2) inside the block.

    File descriptor 2 goes to a temporary file (native code writes there, not to ``sys.stderr``);
    at exit every captured line that does not match is written back. A no-op when
    ``KFM_TF_LOGS=1`` or when file descriptor 2 cannot be duplicated.

    Example::

        with filtered_stderr(BANNER):
            import keras
    """

    def __init__(self, pattern):
        self.pattern = pattern

    def __enter__(self):
        self._saved = None
        if os.environ.get("KFM_TF_LOGS") == "1":
            return self
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return self
        self._capture = tempfile.TemporaryFile()
        os.dup2(self._capture.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._capture.seek(0)
        kept = [line for line in self._capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not self.pattern.search(line)]
        self._capture.close()
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False


def quiet_native_logs() -> filtered_stderr:
    """Context manager: TensorFlow's native INFO / WARNING chatter of one call kept off stderr.

    The TFLite converter and the LiteRT interpreter log from C++ (absl), whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; every line that is not :data:`NATIVE_CHATTER` (errors, fatal
    lines, Python warnings) is written back. ``KFM_TF_LOGS=1`` turns the filter off.

    Example::

        with quiet_native_logs():
            content = converter.convert()
    """
    return filtered_stderr(NATIVE_CHATTER)
