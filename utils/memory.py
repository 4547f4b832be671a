"""Keep the memory a forward or training step frees for the next step, instead of handing it back to the OS (glibc
only). train.py (its Trainer) and evaluation.py set this for their process.

A training step allocates and frees the same large tensors every time: at 352x352 and batch 32 the stem's
activations alone are ~95 MB each. glibc's malloc serves every block above its mmap threshold (at most 32 MB) with
a fresh mmap and unmaps it on free, so each step the kernel maps and zeroes those pages again: ~170,000 page faults
and ~0.4 s of system time a step on the 2-core machine, a third of the step (docs/benchmarks.md, "Training speed").
Inference over batches pays the same on a smaller scale. Two malloc settings stop that: no mmap for blocks (they
come from the heap, whose freed space later steps reuse) and a trim threshold above any step's use (the heap's
free top is not returned after each step). The process keeps its peak memory until it ends, which it reaches in
its first steps anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # mallopt's parameter numbers (glibc's malloc.h)
TRIM_THRESHOLD_BYTES = 2**31 - 1   # the largest mallopt takes (an int)


def keep_freed_memory() -> bool:
    """Set the two malloc options for this process and the data workers it forks; False where the C library has no
    mallopt (macOS, Windows) or refuses them (musl's is a stub): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
