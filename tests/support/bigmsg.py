"""big_message(): a large test message, CRLF, with 8-bit text and lines that start with dots:
what the chunked DATA path must get right at every chunk boundary. Its Date: and Message-ID:
are there so that no relay adds its own and the content arrives exactly as written."""

from __future__ import annotations

import random


def big_message(size: int, seed: int = 7) -> bytes:
    """CRLF mail with 8-bit text and lines that start with dots, about `size` bytes."""
    rng = random.Random(seed)
    lines = [b"From: Scanner <scanner@lan.test>", b"Subject: scan", b"Date: Mon, 7 Dec 2026 01:00:00 +0000",
             b"Message-ID: <scan-%d@lan.test>" % seed, b""]
    words = [b".", b"..", b".dot", b"caf\xc3\xa9", b"na\xc3\xafve", b"x" * 60, b"plain", b"\xe2\x82\xac"]
    total = 0
    while total < size:
        line = b" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"
