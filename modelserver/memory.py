"""Give the memory of a large request back to the system once it has been answered.

Measured (half_plus_two, one 29 MB `instances` body): the worker grew from 63 MB to 131 MB and
stayed there, and to 209 MB after three such bodies; digits_cnn grew from 82 MB to 2.2 GB. Where
it went:

- ONNX Runtime's CPU memory arena keeps the largest tensors it ever allocated, for the life of the
  session: that is the digits_cnn gigabytes. The sessions are created without the arena
  (`enable_cpu_mem_arena = False`, in repository.py): a tensor is freed when the run ends.
- The body (bytes, then the decoded text), the parsed JSON (a list of millions of Python floats),
  the arrays, the response's list and its JSON text are freed after the request, but glibc keeps
  freed heap memory for reuse: its mmap threshold adapts upwards (up to 32 MiB) after the first
  large free, so later large buffers come from the heap, and each of the worker's request
  threads gets its own arena whose free space no other thread can use.

So, in the worker, before its request threads start: the mmap threshold is fixed at 1 MiB
(buffers that large are mapped and unmapped, never parked in the heap; this also stops the
adaptation) and at most 2 arenas serve the request threads (M_ARENA_MAX: four threads spread a
burst over up to eight arenas otherwise, each keeping its own free memory). And after a request
whose body or response was large, `malloc_trim(0)` returns the free pages of every arena.
All of it is glibc-only and silently skipped elsewhere (musl, macOS).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

__all__ = ["tune_malloc", "trim", "TRIM_ABOVE"]

TRIM_ABOVE = 1024 * 1024          # bytes of request or response body after which the worker trims
MMAP_THRESHOLD = 1024 * 1024
ARENA_MAX = 2
_M_MMAP_THRESHOLD = -3            # glibc's mallopt parameter numbers (malloc.h)
_M_ARENA_MAX = -8

_libc = None
_lock = threading.Lock()


def _glibc():
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim  # noqa: B018 - AttributeError when this is not glibc
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold and cap its arenas (call before the request threads start)."""
    libc = _glibc()
    if not libc:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return libc.mallopt(_M_ARENA_MAX, ARENA_MAX) == 1 and ok


def trim() -> bool:
    """Return the free memory of every malloc arena to the system (glibc's malloc_trim(0))."""
    libc = _glibc()
    if not libc:
        return False
    with _lock:                     # one trim at a time: a second one right after finds nothing
        return bool(libc.malloc_trim(0))
