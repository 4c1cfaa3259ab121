"""Folder jobs: list a tree without reading it, refuse what is not a file of the tree, read within a cap.

Every job over a folder (``kfm align``, ``kfm embed`` / ``gallery add`` / ``identify`` on folders,
:meth:`~keras_facemargin.inference.gallery.Gallery.build`, training roots) lists its files here and
goes on past the bad ones, which it reports at the end with one of these reasons
(:data:`FILE_REASONS`):

================  ==========================================================================
``not_a_file``    a FIFO, socket or device, a dangling or looping symbolic link, or a
                  symbolic link to a folder (not followed); never opened
``outside_root``  a symbolic link whose target lies outside the folder given; never opened
``too_large``     a regular file over the job's byte cap; never read
``unreadable``    the file system refused to list or open it (permissions, I/O error)
================  ==========================================================================

(the jobs add their own per-file reasons after reading: ``not_an_image``, ``unreadable``,
``too_large``, ``no_face``, ...). A symbolic link to a regular file inside the root is followed;
one to a regular file outside it only when the job is asked to (``follow_links=True``, ``kfm ...
--follow-links``: a folder of links the user made to photos kept elsewhere).

File names are kept as the file system gives them (``str`` with PEP 383 surrogate escapes for
bytes that are not UTF-8), so every file can be opened again; where a name is shown
(messages, one JSON object per failure, the human-readable summary) it goes through
:func:`display_path`: one line of UTF-8 text whatever the name holds (newlines, tabs, undecodable
bytes), reversible with :func:`keras_facemargin.data.formats.folders.unescape_identity_name`.

:func:`read_regular_file` is the bounded reader: opened without blocking (a FIFO swapped in after
the listing does not hang the job), checked with ``fstat`` to be a regular file, refused over
``max_bytes`` before any byte is read.

This module imports nothing from the package.

Example::

    files, refused = list_tree("raw/", suffixes=(".jpg", ".png"))
    for r in refused:
        print(r.display, r.reason, r.detail)
    data, problem = read_regular_file("raw/a/1.jpg", max_bytes=256 << 20)
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

__all__ = ["FILE_REASONS", "RefusedFile", "display_path", "classify_entry", "list_tree", "read_regular_file"]

#: Reason code -> what it means (the refusals of the listing and of :func:`read_regular_file`).
FILE_REASONS = {
    "not_a_file": "a FIFO, socket or device, a dangling or looping symbolic link, or a link to a folder "
                  "(never opened); expected a regular file",
    "outside_root": "a symbolic link whose target lies outside the folder given (never opened); expected a file "
                    "inside the folder",
    "too_large": "a file over the byte cap (never read)",
    "unreadable": "the file system refused to list or open it",
}

_TO_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f\ud800-\udfff]")
_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match):
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def display_path(path) -> str:
    """``path`` as one line of UTF-8 text: the file system's bytes shown safely.

    Backslash -> ``\\\\``, tab / newline / carriage return -> ``\\t`` / ``\\n`` / ``\\r``, another
    control character or an undecodable byte ``NN`` (a PEP 383 surrogate escape) -> ``\\xNN``, any
    other lone surrogate -> ``\\uNNNN``; everything else is kept, so ordinary names are unchanged.
    ``bytes`` paths are decoded with ``os.fsdecode`` first.
    :func:`keras_facemargin.data.formats.folders.unescape_identity_name` reverses it.

    Example::

        display_path(b"caf\\xe9\\n.jpg")      # 'caf\\\\xe9\\\\n.jpg'
    """
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return _TO_ESCAPE.sub(_escape, text)


@dataclass(frozen=True)
class RefusedFile:
    """An entry of a folder that a job refused without reading it (or could not read).

    Attributes:
        path: the entry as listed (``str``; undecodable bytes as surrogate escapes).
        reason: one of :data:`FILE_REASONS` (or a job's own reason code).
        detail: what was found and what was expected.
    """

    path: str
    reason: str
    detail: str

    @property
    def display(self) -> str:
        """:func:`display_path` of :attr:`path`."""
        return display_path(self.path)

    @property
    def message(self) -> str:
        """``"<display path>: <detail>"``."""
        return f"{self.display}: {self.detail}"

    def to_dict(self) -> dict:
        """``{"path": display path, "reason", "detail"}`` (JSON-friendly, ASCII-safe names)."""
        return {"path": self.display, "reason": self.reason, "detail": self.detail}


def _inside(real, root_real) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def classify_entry(path, root_real, follow_dirs: bool = False, follow_links: bool = False):
    """What ``path`` is, read from its metadata only (nothing is opened).

    Args:
        path: an entry of the tree.
        root_real: ``os.path.realpath`` of the tree's root.
        follow_dirs: a symbolic link to a folder inside the root is ``"dir"`` (else ``not_a_file``).
        follow_links: also follow symbolic links whose target lies outside the root (the user's
            own folder of links to photos kept elsewhere); their target must still be a regular file
            (or a folder, with ``follow_dirs``).

    Returns:
        ``("file", st)`` for a regular file (or a link to one inside the root), ``("dir", st)`` for
        a folder that is not a symbolic link, or ``(reason, detail)`` with a reason of
        :data:`FILE_REASONS`.
    """
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return "not_a_file", "vanished while the folder was listed; expected a regular file"
    except OSError as e:
        return "unreadable", f"cannot inspect it ({e.strerror or type(e).__name__}); expected a regular file"
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "not_a_file", "a symbolic link loop; expected a regular file"
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return "not_a_file", "a dangling symbolic link; expected a regular file"
            return "unreadable", f"cannot follow the symbolic link ({e.strerror or type(e).__name__})"
        if not follow_links and not _inside(os.path.realpath(path), root_real):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "a file"
            return "outside_root", (f"a symbolic link to {what} outside the folder (not opened); expected a file "
                                    "inside the folder (follow_links=True / --follow-links to follow such links)")
        if stat.S_ISDIR(st.st_mode):
            if follow_dirs:
                return "dir", st
            return "not_a_file", "a symbolic link to a folder (not followed); expected a regular file"
        if not stat.S_ISREG(st.st_mode):
            return "not_a_file", f"a symbolic link to {_kind(st.st_mode)} (not opened); expected a regular file"
        return "file", st
    if stat.S_ISDIR(lst.st_mode):
        return "dir", lst
    if not stat.S_ISREG(lst.st_mode):
        return "not_a_file", f"{_kind(lst.st_mode)} (not opened); expected a regular file"
    return "file", lst


def _kind(mode) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


def list_tree(root, suffixes=None, include_hidden: bool = False, max_bytes=None, recursive: bool = True,
              follow_links: bool = False):
    """The regular files under ``root`` (recursively) and the entries refused, nothing opened.

    Folders are walked in sorted name order; symbolic links to folders are not followed (as
    ``os.walk`` and ``Path.rglob`` do). An entry whose name does not end with one of ``suffixes``
    (compared in lower case; ``None``: every name) is left out silently, whatever it is; every
    other entry is a file or a :class:`RefusedFile`.

    Args:
        root: the folder.
        suffixes: accepted name endings (with the dot), or ``None`` for every file.
        include_hidden: also list names starting with ``"."`` (and what hidden folders hold).
        max_bytes: refuse regular files over this size (``too_large``), or ``None``.
        recursive: also list sub-folders.
        follow_links: accept symbolic links to regular files outside ``root`` (default: refused,
            ``outside_root``); links to folders are never followed.

    Returns:
        ``(files, refused)``: paths relative to ``root`` (``"a/b.jpg"``, ``str`` with surrogate
        escapes), in sorted walk order, and :class:`RefusedFile` s whose ``path`` is relative too.

    Example::

        files, refused = list_tree("photos", suffixes=(".jpg",))
    """
    root = os.fspath(root)
    root_real = os.path.realpath(root)
    exts = None if suffixes is None else tuple(s.lower() for s in suffixes)
    files, refused = [], []

    def walk(rel_dir):
        folder = os.path.join(root, rel_dir) if rel_dir else root
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            refused.append(RefusedFile(rel_dir or ".", "unreadable",
                                       f"cannot list the folder ({e.strerror or type(e).__name__})"))
            return
        for name in names:
            if not include_hidden and name.startswith("."):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            kind, info = classify_entry(os.path.join(folder, name), root_real, follow_links=follow_links)
            if kind == "dir":
                if recursive:
                    walk(rel)
                continue
            if exts is not None and not name.lower().endswith(exts):
                continue
            if kind != "file":
                refused.append(RefusedFile(rel, kind, info))
            elif max_bytes is not None and info.st_size > max_bytes:
                refused.append(RefusedFile(rel, "too_large", f"file of {info.st_size:,} bytes exceeds the cap of "
                                                              f"{int(max_bytes):,} bytes (not read)"))
            else:
                files.append(rel)

    walk("")
    return files, refused


def read_regular_file(path, max_bytes, head=None):
    """The bytes of the regular file ``path``, read within ``max_bytes``.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO does not wait for a writer) and
    checked with ``fstat`` on the open descriptor: a FIFO, socket, device or folder is refused
    (``not_a_file``) and a file over ``max_bytes`` is refused (``too_large``) before any byte is
    read; at most ``max_bytes + 1`` bytes are ever read (a file growing meanwhile is refused).
    With ``head``, only the first ``head`` bytes are read (the checks are the same).

    Returns:
        ``(data, None)`` or ``(None, (reason, detail))`` with reason ``not_found``,
        ``not_a_file``, ``too_large`` or ``unreadable``.

    Example::

        data, problem = read_regular_file("a.jpg", 256 << 20)
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None, ("not_found", "file not found (expected an image file)")
    except IsADirectoryError:
        return None, ("not_a_file", "is a directory; expected a regular file")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, ("not_a_file", "a symbolic link loop; expected a regular file")
        return None, ("unreadable", f"cannot open the file ({type(e).__name__}: {e.strerror or e})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, ("not_a_file", f"is {_kind(st.st_mode)}; expected a regular file")
        if st.st_size > max_bytes:
            return None, ("too_large", f"file of {st.st_size:,} bytes exceeds the cap of {int(max_bytes):,} bytes")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = None
            data = fh.read(int(max_bytes) + 1 if head is None else int(head))
    except OSError as e:
        return None, ("unreadable", f"cannot read the file ({type(e).__name__}: {e.strerror or e})")
    finally:
        if fd is not None:
            os.close(fd)
    if len(data) > max_bytes:
        return None, ("too_large", f"file grew over the cap of {int(max_bytes):,} bytes while it was read")
    return data, None
