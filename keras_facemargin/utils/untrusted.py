"""Small helpers shared by the readers of untrusted files: bounded text of the values read from
them (for error messages) and the check of the readers' cap arguments.

A value from a crafted file may be a 10-million-bit integer, a deeply nested list or a string of
control characters: `short_repr` and `plain_text` never fail and never grow past their limit.

Example::

    raise WeightsConversionError(f"{path}: tensor {short_repr(name)} has {short_repr(shape)} dims.")
    max_ratio = positive_cap(max_ratio, "max_ratio")
"""

from __future__ import annotations

import reprlib

__all__ = ["short_repr", "plain_text", "positive_cap"]


def short_repr(value, limit=120):
    """A bounded, never-failing repr of a value from the file (huge ints, deep nesting, long strings).

    Args:
        value: anything.
        limit: most characters returned (``"..."`` is appended when cut).

    Example::

        short_repr(1 << 100_000)        # '<int of 100001 bits>'
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    try:
        r = reprlib.Repr()
        r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, 40
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a repr must not fail the error message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def plain_text(value, limit=80):
    """A string from the file, unquoted, with control characters escaped and its length bounded
    (`short_repr` for anything that is not a string).

    Example::

        plain_text("os\\nsystem")      # 'os\\\\nsystem'
    """
    if not isinstance(value, str):
        return short_repr(value, limit)
    text = repr(value[:limit])[1:-1]
    return text + ("..." if len(value) > limit else "")


def positive_cap(value, name):
    """`value` if it is a positive number (a reader's cap argument), else ``ValueError`` naming `name`.

    Example::

        positive_cap(16.0, "max_ratio")     # 16.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return value
