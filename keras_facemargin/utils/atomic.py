"""Atomic writes of state files: after a crash (kill -9, power loss) a file holds its old or its new content.

Every state file of the package (``config.json``, ``results.json``, ``history.jsonl``,
``data_report.json``, ``identities.tsv``, weights checkpoints, caches, reports) is written here:

1. the content goes to a temporary file in the same directory, named
   ``.<name>.<pid>-<thread id>-<random hex>.tmp``: unique per process, per thread and per call, so
   concurrent writers (threads or processes) never share a temporary file;
2. the temporary file is flushed and ``fsync``-ed, then ``os.replace``-d onto the final name (an
   atomic rename on POSIX and Windows), and the directory is ``fsync``-ed so that the rename
   itself survives a power loss;
3. on any error (including ``KeyboardInterrupt``) the temporary file is removed and the final
   name is untouched.

A process killed between steps 1 and 2 leaves its hidden ``.<name>.*.tmp`` file behind (never
read by the package; safe to delete). With several writers of one file the last rename wins,
each rename installing one complete version.

Example::

    from keras_facemargin.utils.atomic import atomic_write_json
    atomic_write_json("runs/demo/results.json", {"accuracy": 0.99}, indent=2)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from pathlib import Path

__all__ = ["temporary_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_writer",
           "atomic_path", "fsync_directory"]


def temporary_path(path, suffix=".tmp"):
    """A fresh temporary name beside `path`: ``.<name>.<pid>-<thread id>-<random>.tmp``.

    Unique per process, thread and call (64 random bits), in the same directory (so that
    ``os.replace`` is a rename within one file system).

    Example::

        temporary_path("runs/a/config.json")   # runs/a/.config.json.4242-1397-9f0c1d2e3a4b5c6d.tmp
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(8)}{suffix}")


def fsync_directory(directory):
    """``fsync`` a directory so that a rename inside it is durable (a no-op where unsupported).

    Example::

        fsync_directory("runs/a")
    """
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows, or a file system that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replace_on_success(tmp, path):
    """The shared tail of `atomic_writer` and `atomic_path`: when the block ends normally, rename
    `tmp` onto `path` and fsync the directory; on any exception (``BaseException``) remove `tmp`
    (if it exists) and re-raise, leaving `path` untouched.

    The block is expected to have written and fsync-ed `tmp` itself.

    Args:
        tmp: the temporary file (a ``Path`` beside `path`, see `temporary_path`).
        path: the final file (a ``Path``).

    Example::

        with _replace_on_success(tmp, path):
            write_and_fsync(tmp)
    """
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_writer(path, mode="wb", encoding=None, newline=None):
    """Context manager: a file object whose content replaces `path` atomically when the block ends.

    The file is a new temporary file (`temporary_path`, created exclusively, mode 0o644 before
    the umask); on a normal exit it is flushed, fsync-ed and renamed onto `path`, and the
    directory is fsync-ed. On an exception it is removed and `path` is left as it was.

    Args:
        path: the final file; its directory must exist.
        mode: ``"wb"`` (default) or ``"w"`` (text).
        encoding, newline: for text mode (default encoding UTF-8).

    Example::

        with atomic_writer("runs/a/ckpt-8.npz") as f:
            np.savez(f, **arrays)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer: mode must be 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    with _replace_on_success(tmp, path):
        try:
            f = open(fd, "w", encoding=encoding or "utf-8", newline=newline) if mode == "w" else open(fd, "wb")
        except BaseException:
            os.close(fd)  # open() failed: the descriptor is still ours
            raise
        with f:  # closes fd
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Context manager for writers that take a file name: yields a fresh temporary path; when the
    block ends, that file is fsync-ed and renamed onto `path` (removed on an exception).

    Args:
        path: the final file.
        suffix: the temporary name's ending (e.g. ``".weights.h5"`` for Keras, which checks it).

    Example::

        with atomic_path("cache/m.weights.h5", suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
    """
    path = Path(path)
    tmp = temporary_path(path, suffix)
    with _replace_on_success(tmp, path):
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path, data):
    """Replace `path` with `data` (bytes) atomically; returns `path` as a ``Path``.

    Example::

        atomic_write_bytes("cache/x.bin", b"...")
    """
    with atomic_writer(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path, text, encoding="utf-8"):
    """Replace `path` with `text` atomically (newlines written as given); returns `path` as a ``Path``.

    Example::

        atomic_write_text("runs/a/identities.tsv", "label\\tidentity\\n0\\talice\\n")
    """
    with atomic_writer(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path, obj, **dumps_kwargs):
    """Replace `path` with ``json.dumps(obj, **dumps_kwargs) + "\\n"`` atomically; returns `path`.

    The JSON is serialised completely before the file is touched, so an object that cannot be
    serialised leaves `path` as it was.

    Example::

        atomic_write_json("runs/a/results.json", results, indent=2, default=float)
    """
    text = json.dumps(obj, **dumps_kwargs) + "\n"
    return atomic_write_text(path, text)
