#!/usr/bin/env python3
"""memgrep — count occurrences of a string in a live process's writable memory, core-free.

    memgrep.py PID STRING        prints the count; exit 0

Reads /proc/PID/maps and /proc/PID/mem (needs root or ptrace rights over PID), region by
region, without stopping the process or writing a core file. Used by the privilege
separation tests (GUARANTEES S7): the smtpd process must hold no smarthost secret.
Searches the UTF-8 bytes and the base64 forms a caller passes as extra arguments.
Must never: write to the target's memory (the file is opened read-only).
"""

from __future__ import annotations

import re
import sys

CHUNK_BYTES = 1 << 20
_MAP = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)")


def regions(pid: int):
    """Readable, writable private regions: heap, stacks, anonymous maps, data segments."""
    with open(f"/proc/{pid}/maps", encoding="ascii") as handle:
        for line in handle:
            match = _MAP.match(line)
            if match and match.group(3).startswith("rw") and "[vvar]" not in match.group(4):
                yield int(match.group(1), 16), int(match.group(2), 16)


def count(pid: int, needles: list[bytes]) -> int:
    found = 0
    overlap = max(len(n) for n in needles) - 1
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for start, end in regions(pid):
            tail = b""
            for offset in range(start, end, CHUNK_BYTES):
                try:
                    mem.seek(offset)
                    data = tail + mem.read(min(CHUNK_BYTES, end - offset))
                except (OSError, ValueError, OverflowError):
                    break
                found += sum(data.count(n) - tail.count(n) for n in needles)
                tail = data[-overlap:] if overlap else b""
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 64
    print(count(int(argv[1]), [a.encode() for a in argv[2:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
