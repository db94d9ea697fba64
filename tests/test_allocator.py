"""common/allocator.py: freed host memory stays in the process, so reusing it costs no page faults."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from common import allocator
from tests.conftest import REPO

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's mallopt; other C libraries keep their defaults")

# Allocate, touch and free a block as large as XLA's scratch memory for cpu-baby, several times,
# and count the page faults after the first round: the first round has to fault the pages in.
_FAULTS_AFTER_FIRST_ROUND = """
import ctypes, resource, sys
from common.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    print(retain_freed_memory(), file=sys.stderr)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 47 * 2**20
for round in range(6):
    if round == 1:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _huge_pages_always() -> bool:
    """With transparent huge pages always on, the kernel faults a large block in 2 MB at a time, so
    glibc's defaults cost a few hundred faults a round, not thousands."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def _faults_after_first_round(mode: str, **env) -> int:
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, **env}
    result = subprocess.run([sys.executable, "-c", _FAULTS_AFTER_FIRST_ROUND, mode], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True, timeout=60)
    return int(result.stdout)


@glibc_only
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again():
    pages_per_round = 47 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    # With the settings the rounds after the first reuse the pages already there ...
    assert _faults_after_first_round("retain") < pages_per_round // 10
    # ... where glibc's defaults unmap the block on free, and every round faults it in again.
    if not _huge_pages_always():
        assert _faults_after_first_round("default") > 4 * pages_per_round


@glibc_only
def test_the_settings_are_reported_and_a_users_own_tunables_win(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert allocator.retain_freed_memory() == ("glibc mallopt mmap_max=0 trim_threshold=1073741824 "
                                               "top_pad=67108864")
    tunables = "glibc.malloc.mmap_threshold=131072"
    monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert allocator.retain_freed_memory() == f"the user's GLIBC_TUNABLES={tunables}"
    # The user's setting is not overridden: a process started with it faults as glibc's defaults do.
    if not _huge_pages_always():
        pages_per_round = 47 * 2**20 // os.sysconf("SC_PAGE_SIZE")
        assert _faults_after_first_round("retain", GLIBC_TUNABLES=tunables) > 4 * pages_per_round
