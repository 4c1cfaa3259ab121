"""TensorFlow's native chatter is kept off stderr; real errors and warnings still reach the user."""

import os
import subprocess
import sys

from testing import repo_env

from keras_facemargin.utils.tf_logs import quiet_native_logs

# Lines copied from a `kfm export dlib_resnet_v1 --format tflite` run (TensorFlow 2.21, ai-edge-litert).
CHATTER = [
    "W0000 00:00:1796579018.654340   25101 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.",
    "I0000 00:00:1796579018.654789   25101 reader.cc:83] Reading SavedModel from: /tmp/tmpy5mfb76c/savedmodel",
    "I0000 00:00:1796579019.499954   25101 dump_mlir_util.cc:269] disabling MLIR crash reproducer, set env var",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
KEPT = [
    "E0000 00:00:1796579019.499954   25101 converter.cc:12] Conversion failed: op not supported",
    "UserWarning: something the user should see",
]


def test_native_chatter_is_filtered_and_the_rest_written_back(capfd):
    with quiet_native_logs():
        for line in CHATTER + KEPT:
            os.write(2, (line + "\n").encode())  # the file descriptor, as native code writes
    err = capfd.readouterr().err
    assert err.splitlines() == KEPT


def test_kfm_tf_logs_1_turns_the_filter_off():
    code = ("import os; from keras_facemargin.utils.tf_logs import quiet_native_logs\n"
            "with quiet_native_logs(): os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')")
    for flag, expected in (("1", "XNNPACK"), ("0", "")):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=repo_env(KFM_TF_LOGS=flag))
        assert proc.returncode == 0 and expected in proc.stderr and (expected or proc.stderr.strip() == "")
