"""Keep freed host memory in the process, so that a training step does not page-fault it back in.

XLA:CPU allocates each compiled program's scratch memory afresh on every call: 47 MB a step for
cpu-baby. glibc's malloc hands an allocation that large to mmap and unmaps it again when it is
freed, and smaller ones in a thread's heap are released once that heap empties; either way the next
step touches fresh pages, and the kernel faults and zeroes them one by one (about 12,000 a step, a
quarter to a third of the JAX and TensorFlow steps on the 2-core CPU). Allocators such as tcmalloc
and jemalloc keep freed memory for reuse; glibc does when told to, which is all this does. Every
framework's run gets the same setting, so the comparison stays fair.

A user's own GLIBC_TUNABLES malloc settings are left as they are; on a C library other than glibc
(macOS, musl) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
MiB = 1 << 20
SETTINGS = {
    # Nothing from mmap: every block comes from a heap, where a freed block is kept for reuse.
    "mmap_max": (_M_MMAP_MAX, 0),
    # Hand the top of the main heap back to the system only when a whole GiB of it lies free.
    "trim_threshold": (_M_TRIM_THRESHOLD, 1024 * MiB),
    # Keep this much free at the top of every heap; a thread's heap (64 MiB at most) is then never
    # unmapped when it empties.
    "top_pad": (_M_TOP_PAD, 64 * MiB),
}


def retain_freed_memory() -> str:
    """Apply SETTINGS to glibc's malloc for the rest of the process; return what the process runs
    with, in words, for the run's env.json."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in tunables:
        return f"the user's GLIBC_TUNABLES={tunables}"
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return "the C library's defaults (not glibc)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = [f"{name}={value}" for name, (param, value) in SETTINGS.items() if mallopt(param, value) == 1]
    return f"glibc mallopt {' '.join(applied)}" if applied else "the C library's defaults (mallopt refused)"
