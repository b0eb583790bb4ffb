"""Ask the kernel to wake a latency-sensitive thread promptly.

Linux's fair scheduler (EEVDF, since 6.6) gives every thread a *slice*, and
since 6.12 a thread may ask for a shorter one (``sched_setattr`` with
``sched_runtime`` on a normal-policy thread, no privilege needed). A
thread with a short slice has an earlier deadline when it wakes, so it
preempts a thread that has been running flat out instead of waiting for
that thread's slice to end: what a thread that answers control requests,
or times them, wants when every core is busy with rule calls. It gets no
more CPU than before, only sooner.

Best effort: on other systems, older kernels or a refused call,
:func:`request_short_slice` changes nothing and says so. The thread's
policy and nice value are kept as they are.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
import sys

__all__ = ["SHORT_SLICE_NS", "request_short_slice", "thread_slice_ns"]

#: The slice asked for: the kernel's minimum, 0.1 ms.
SHORT_SLICE_NS = 100_000

#: struct sched_attr (include/uapi/linux/sched/types.h), its first version.
_ATTR = struct.Struct("=IIQiIQQQII")
#: (sched_setattr, sched_getattr) by machine.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
_RUNTIME = 5  # index of sched_runtime in _ATTR
#: Threads and processes this thread starts get the default slice again.
_RESET_ON_FORK = 0x01


@functools.cache
def _syscalls() -> tuple[ctypes.CDLL, int, int] | None:
    # Once per process: every control connection's thread asks.
    numbers = _SYSCALLS.get(platform.machine())
    if not sys.platform.startswith("linux") or numbers is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc, numbers[0], numbers[1]


def _get(libc: ctypes.CDLL, number: int) -> list[int] | None:
    buf = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(number, 0, buf, _ATTR.size, 0) != 0:
        return None
    return list(_ATTR.unpack(buf.raw))


def thread_slice_ns() -> int | None:
    """The calling thread's slice as the kernel reports it (``None`` where
    it cannot be read)."""
    calls = _syscalls()
    if calls is None:
        return None
    attr = _get(calls[0], calls[2])
    return None if attr is None else attr[_RUNTIME]


def request_short_slice(slice_ns: int = SHORT_SLICE_NS) -> bool:
    """Ask for a ``slice_ns`` slice for the calling thread; whether the
    kernel now reports it. ``LIVEPATCH_NO_SHORT_SLICE=1`` turns it off
    (to compare, or where an operator's own scheduling policy rules)."""
    if os.environ.get("LIVEPATCH_NO_SHORT_SLICE"):
        return False
    calls = _syscalls()
    if calls is None:
        return False
    libc, set_number, get_number = calls
    attr = _get(libc, get_number)
    if attr is None:
        return False
    attr[0] = _ATTR.size
    attr[2] = _RESET_ON_FORK
    attr[_RUNTIME] = slice_ns
    raw = ctypes.create_string_buffer(_ATTR.pack(*attr), _ATTR.size)
    if libc.syscall(set_number, 0, raw, 0) != 0:
        ctypes.set_errno(0)
        return False
    return thread_slice_ns() == slice_ns
