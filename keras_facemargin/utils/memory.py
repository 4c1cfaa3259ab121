"""This process's peak resident memory, measured so that a parent's memory does not leak into it.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is inherited through ``fork`` + ``exec`` on Linux: a
subprocess started by a 1.7 GB test worker reports at least 1.7 GB, whatever it used itself.
``VmHWM`` in ``/proc/self/status`` is the high-water mark of this program's own address space.

Example::

    from keras_facemargin.utils.memory import peak_rss_mb
    print(f"peak RSS {peak_rss_mb():.0f} MB")
"""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` on Linux, else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024
