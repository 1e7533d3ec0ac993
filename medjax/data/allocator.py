"""glibc allocator tuning for the data pipeline: opt-in, process-wide, enabled by the ``medjax`` command.

Crops (3.5 MB each at 96^3 float32) and batches are a few MB; by default glibc serves such blocks with fresh
``mmap`` s or trims them off the heap when freed, so every new buffer is zero-filled page by page by the
kernel, which costs as much CPU as filling it with data. Serving blocks up to 32 MB from the heap and keeping
up to 256 MB of freed heap halves the CPU per sample of the prepared-cache pipeline.

``mallopt`` changes malloc for the whole process, so importing or using medjax as a library never calls it
(a notebook kernel or another program keeps its own allocator settings). The ``medjax`` command line (and
the demo job) call :func:`tune_allocator` once at start-up, where medjax owns the process; set
``MEDJAX_MALLOC_TUNING=0`` to keep glibc's defaults there too. A program that embeds medjax opts in by
calling :func:`tune_allocator` itself.
"""

from __future__ import annotations

import os
import sys

ENV = "MEDJAX_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters
SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 64 << 20))

_tuned = False


def _mallopt():
    """glibc's ``mallopt`` or None (not Linux/glibc, e.g. musl or macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt`` once per process; returns whether they are in effect.

    Does nothing (returns False) with ``MEDJAX_MALLOC_TUNING=0``, when the process set glibc's own
    ``MALLOC_*`` / ``GLIBC_TUNABLES`` variables (they win), or off glibc.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get(ENV, "1") == "0":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    for param, value in SETTINGS:
        mallopt(param, value)
    _tuned = True
    return True

