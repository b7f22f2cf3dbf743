"""Recycled memory for passes over large feature maps (glibc's allocator).

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold
(at most 32 MB) with fresh pages from the kernel and returns them on ``free``; below it, it
trims the top of the heap as soon as more than twice that is free. FRCRN's and MossFormer's
inference passes allocate and free maps of tens to hundreds of MB per layer, so nearly every
layer's output is first-touched page by page: on a 2-core VM, a 10 s FRCRN pass (5.4-6.1 s)
took 0.65-0.74 million page faults and 1.3-1.9 s of system time.

:func:`recycled_memory` keeps freed memory in the process for the duration of a pass (no mmap
for large blocks, no trimming), so the next layer reuses the pages the last one freed, and
gives what is left back to the system afterwards (``malloc_trim``). ``FRCRN.forward``,
``MossFormerMaskNet.forward`` and ``MossFormerGANSE.forward`` run in it after
``fuse_for_inference()``, and
``RecipeBrain.fit`` (:mod:`speechbrain_ext.training.brain`) runs a whole training in it: every
step allocates and frees the same maps as the one before (a MossFormer step at 1 s otherwise
faults 0.2 million pages back in).

Outside glibc (macOS, musl) it does nothing. It does nothing either when the process already
chose its allocator settings (any ``MALLOC_*`` environment variable, e.g.
``MALLOC_MMAP_MAX_``), or with ``SPEECHBRAIN_EXT_RECYCLE_MEMORY=0``. After the first pass the
process keeps fixed thresholds equal to the ceiling glibc's own adaptive ones reach (32 MB
mmap threshold, 64 MB trim threshold): glibc cannot return to adaptive mode.

Authors: speechbrain-ext contributors
"""

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: What glibc's adaptive thresholds grow to at most (64-bit), restored after a pass.
_MMAP_THRESHOLD_CEILING = 32 * 1024 * 1024
_TRIM_THRESHOLD_CEILING = 2 * _MMAP_THRESHOLD_CEILING
_MMAP_MAX_DEFAULT = 65536

_lock = threading.Lock()
_active = 0  # passes running now (threads, nesting): settings restored when the last ends


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library if it is glibc and the process left its allocator alone, else ``None``."""
    if os.environ.get("SPEECHBRAIN_EXT_RECYCLE_MEMORY", "1") == "0":
        return None
    if any(name.startswith("MALLOC_") for name in os.environ):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError outside glibc)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def recycled_memory(enabled=True):
    """Keep freed memory for reuse inside the block; give the rest back to the system after.

    Arguments
    ---------
    enabled : bool
        False: an empty context (what a model that is not fused for inference runs in).

    Example
    -------
    >>> import torch
    >>> with recycled_memory():
    ...     y = sum(torch.ones(1 << 24) for _ in range(3))  # 64 MB blocks, pages reused
    >>> y[0].item()
    3.0
    """
    global _active
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    with _lock:
        if _active == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
                libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_CEILING)
                libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_CEILING)
                release_free_memory()


def release_free_memory():
    """Give the memory the process holds freed back to the system now (``malloc_trim``; a
    no-op outside glibc). What a recycled training run calls after each validation, whose
    whole-utterance maps are larger than the training steps'.

    Example
    -------
    >>> release_free_memory()
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
