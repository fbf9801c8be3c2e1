"""alloc.tune(): after it, a socket read the size asyncio makes (256 KiB) costs no mmap,
munmap or mremap of its own, as strace counts them. Run in a child process: the settings
are process-wide and must not leak into the test session."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
READS = 200
PROGRAM = f"""
import socket, sys
from mta_lite.process import alloc
if sys.argv[1] == "tuned":
    assert alloc.tune()
a, b = socket.socketpair()
for _ in range({READS}):
    a.send(b"x" * 1024)
    assert len(b.recv(256 * 1024)) == 1024
"""


def _memory_calls(mode: str) -> int:
    """mmap + munmap + mremap calls of one run of PROGRAM."""
    out = subprocess.run(["strace", "-f", "-c", "-e", "trace=mmap,munmap,mremap", "-o", "/dev/stderr",
                          sys.executable, "-c", PROGRAM, mode], cwd=REPO, capture_output=True, text=True, check=True)
    total = [line for line in out.stderr.splitlines() if line.rstrip().endswith("total")]
    return int(total[0].split()[3]) if total else 0


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (tools/install-test-deps.sh)")
def test_socket_reads_map_no_memory_once_tuned():
    untuned, tuned = _memory_calls("plain"), _memory_calls("tuned")
    assert untuned >= 3 * READS             # the cost being removed: mmap, mremap, munmap per read
    assert tuned < untuned - 3 * READS + READS // 10
