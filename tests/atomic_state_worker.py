"""Run by tests/test_atomic_state.py in a fresh process.

    python atomic_state_worker.py rewrite PATH          # rewrite PATH forever (utils/atomic.py only)
    python atomic_state_worker.py train ROOT OUT EPOCHS [--config-from FILE]

``rewrite`` alternates two JSON documents (``{"version": "a"|"b", "pad": ...}``, about 1 MB each)
in PATH with `atomic_write_json`, printing "ready" after the first write; the test kills it with
SIGKILL at random moments. It loads ``keras_facemargin/utils/atomic.py`` by file path, so that the
loop starts in milliseconds (no Keras import).

``train`` trains a tiny KappaFace IResNet on the image folders ROOT into OUT/tiny (resuming from
its checkpoints), with the config of FILE when given (a run's ``config.json``, read back with
``TrainConfig.from_json``). With ``KFM_KILL_WRITING=NAME`` set, the process SIGKILLs itself in the
middle of the first write to a file whose name contains NAME (half the bytes written and fsync-ed):
the crash of a kill -9 while a state file is being written. Prints ``RESULT {json}`` at the end.
"""

import builtins
import io
import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install_kill_hook(target):
    """Make `open`/`io.open` return files that SIGKILL the process halfway through a write to `target`."""
    real_open = builtins.open

    class KillingFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: max(1, len(data) // 2)])
            self._f.flush()
            os.fsync(self._f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def hooked_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fsdecode(file)
        return KillingFile(f) if target in os.path.basename(name) else f

    builtins.open = hooked_open
    io.open = hooked_open


def rewrite(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("atomic", REPO / "keras_facemargin" / "utils" / "atomic.py")
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    docs = [{"version": v, "pad": v * (1 << 20)} for v in ("a", "b")]
    i = 0
    while True:
        atomic.atomic_write_json(path, docs[i % 2])
        if i == 0:
            print("ready", flush=True)
        i += 1


def train(root, out, epochs, config_from=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from keras_facemargin.training import Trainer
    from keras_facemargin.training.config import TrainConfig, get_experiment

    if config_from:
        cfg = TrainConfig.from_json(config_from).replace(epochs=epochs)
    else:
        cfg = get_experiment(
            "ms1mv2", data=[root], name="tiny", output=out, loss="kappaface", backbone="iresnet18",
            backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [4, 8, 8, 8]}, embedding_dim=8,
            image_size=16, scale=16.0, batch_size=2, lr_reference_batch=2, epochs=epochs, lr_steps=(5,),
            save_every_steps=2, verification_sets="", plots=False, verbose=0)
    if os.environ.get("KFM_KILL_WRITING"):
        install_kill_hook(os.environ["KFM_KILL_WRITING"])
    results = Trainer(cfg).train()
    print("RESULT " + json.dumps({"resumed_from_step": results["resumed_from_step"],
                                  "epochs": results["history"].get("epoch", []),
                                  "fingerprint": results["data"]["fingerprint"]}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "rewrite":
        rewrite(sys.argv[2])
    else:
        args = sys.argv[2:]
        config_from = None
        if "--config-from" in args:
            k = args.index("--config-from")
            config_from = args[k + 1]
            del args[k:k + 2]
        train(args[0], args[1], int(args[2]), config_from)
