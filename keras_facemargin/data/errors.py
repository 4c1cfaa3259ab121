"""Shared bad-record reporting for the file-backed input pipelines.

Readers of RecordIO, TFRecord and image folders all handle corrupt input the
same way, selected by ``on_error``:

* ``"skip"``: the record is left out, counted in a :class:`BadRecordReport`
  (which the caller can read at any time) and a warning naming the file, the
  offset (or path) and the reason is logged for the first few records, plus a
  summary after up-front scans.
* ``"raise"``: a :class:`BadRecordError` (a ``ValueError``) naming the file and
  offset is raised (the reader's own subclass: ``RecordIORecordError``,
  ``TFRecordRecordError``, ``ImageFileError``; see :mod:`keras_facemargin.errors`).

Records are deduplicated by ``(file, offset)``: a corrupt JPEG met in every
epoch counts once in :attr:`BadRecordReport.count` (and once per meeting in
:attr:`BadRecordReport.occurrences`).

Example::

    report = BadRecordReport()
    ds = make_dataset("faces_emore", 128, on_error="skip", report=report)
    ...
    print(report.count, report.by_reason, report.examples[:3])
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from keras_facemargin.errors import BadRecordError  # noqa: F401  (defined there; a ValueError)
from keras_facemargin.utils.folder_files import display_path

__all__ = ["BadRecordError", "BadRecordReport", "check_on_error"]

logger = logging.getLogger("keras_facemargin.data")

ON_ERROR_CHOICES = ("skip", "raise")


def check_on_error(on_error):
    """Validate an ``on_error`` argument (``"skip"`` or ``"raise"``) and return it."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"`on_error` must be 'skip' or 'raise', got {on_error!r}.")
    return on_error


class BadRecordReport:
    """Thread-safe counter of bad records met by a reader or pipeline.

    Args:
        max_examples: how many bad records are kept in :attr:`examples` (and
            individually logged).

    Attributes:
        count: distinct bad records (by ``(file, offset)``).
        occurrences: bad-record meetings (a record skipped in 3 epochs counts 3).
        by_reason: ``Counter`` of distinct bad records per reason.
        examples: the first ``max_examples`` records as
            ``{"file", "offset", "reason", "detail", "key"}`` dicts.

    Example::

        report = BadRecordReport()
        report.add("train.rec", 1024, "bad_magic", key=7)
        report.count, report.by_reason["bad_magic"]   # -> 1, 1
    """

    def __init__(self, max_examples: int = 10):
        self.max_examples = int(max_examples)
        self._lock = threading.Lock()
        self._seen = set()
        self.occurrences = 0
        self.by_reason = Counter()
        self.examples = []

    @property
    def count(self) -> int:
        return len(self._seen)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:  # a report object is always truthy, even when empty
        return True

    def add(self, file, offset, reason, detail="", key=None, log=True) -> bool:
        """Record one bad record; returns ``True`` the first time it is seen."""
        with self._lock:
            self.occurrences += 1
            ident = (str(file), offset)
            if ident in self._seen:
                return False
            self._seen.add(ident)
            self.by_reason[reason] += 1
            first = len(self.examples) < self.max_examples
            if first:
                self.examples.append({"file": str(file), "offset": offset, "reason": reason,
                                      "detail": detail, "key": key})
        if log and first:
            shown = display_path(file)  # one line whatever the name holds (newlines, bytes not UTF-8)
            where = shown if offset is None else f"{shown} @ offset {offset}"
            logger.warning("Skipping bad record (%s) in %s%s", reason, where,
                           f": {detail}" if detail else "")
        return True

    def add_error(self, err: BadRecordError, key=None, log=True) -> bool:
        """Record a :class:`BadRecordError`."""
        return self.add(err.file, err.offset, err.reason, err.detail, key=key, log=log)

    def summary(self) -> str:
        """One line: counts per reason and the first few offsets."""
        if not self.count:
            return "no bad records"
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.by_reason.items()))
        where = "; ".join(
            display_path(e["file"]) if e["offset"] is None else f"{display_path(e['file'])} @ {e['offset']}"
            for e in self.examples[:5]
        )
        return f"{self.count} bad record(s) skipped ({reasons}); first: {where}"

    def log_summary(self):
        """Log :meth:`summary` as a warning when anything was skipped."""
        if self.count:
            logger.warning("%s", self.summary())

    def __repr__(self):
        return f"BadRecordReport(count={self.count}, by_reason={dict(self.by_reason)})"
