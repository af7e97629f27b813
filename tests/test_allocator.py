"""convae keeps freed memory in the process (allocator.py): shown by the page faults a step pattern costs."""

import subprocess
import sys

import pytest

# Each round allocates 24 blocks of 1.5 MiB (36 MiB, as a training step's activations), writes them, frees them all.
# With glibc's defaults the freed heap top is handed back (trimmed) and the next round faults its pages in again;
# with keep_freed_memory the second round onwards reuses them.
ROUNDS = """
import ctypes, resource, sys
from convae.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 3 * 2**19
def one_round():
    blocks = [libc.malloc(size) for _ in range(24)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in reversed(blocks):
        libc.free(b)
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_round()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    faults = {}
    for mode in ("default", "kept"):
        out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True,
                             env={"PATH": "/usr/bin:/bin"}).stdout.split()
        faults[mode] = int(out[1])
        if mode == "kept":
            assert out[0] == "True"
    pages = 10 * 24 * 3 * 2**19 // 4096
    assert faults["default"] > pages // 2  # the pattern does fault without the setting (else the test shows nothing)
    assert faults["kept"] < pages // 50


def test_a_users_own_malloc_settings_win(monkeypatch):
    from convae.allocator import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert keep_freed_memory() is False
