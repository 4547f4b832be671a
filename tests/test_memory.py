"""utils/memory.py: with glibc, a large block freed and allocated again no longer costs fresh page faults."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Allocates and fills a 96 MB tensor (the size of the stem's activations at 352x352, batch 32) 20 times in a fresh
# process, after 10 times to warm up, and prints the page faults the 20 took, with or without keep_freed_memory().
FAULTS = '''
import resource, sys, torch
sys.path.insert(0, {repo!r})
from utils.memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == 'tuned' else None
for _ in range(10):   # with the options set, the first few blocks still fault while the heap settles
    torch.empty(24 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(24 * 2**20).fill_(1.0)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, '-c', FAULTS.format(repo=str(REPO)), mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_freed_blocks_are_reused_without_new_page_faults():
    applied, tuned = page_faults('tuned')
    if applied != 'True':
        pytest.skip('this C library has no mallopt (not glibc): keep_freed_memory changes nothing here')
    _, plain = page_faults('plain')
    # Plain glibc maps each 96 MB block afresh: ~24,500 faults of 4 KiB pages each time, ~490,000 in all; with the
    # options set, the heap's pages are reused (0 here).
    assert plain > 20 * 20_000
    assert tuned < plain / 10
