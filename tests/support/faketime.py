"""faketime — a clock the test can move under a running daemon (libfaketime, file-driven).

`faketime '1970-01-01 00:00:00' cmd` fixes a process's clock at its start. MovableClock
instead preloads libfaketime with FAKETIME_TIMESTAMP_FILE: every process started with its
env() reads the fake time from one file, again at most every second
(FAKETIME_CACHE_DURATION), so at("1970-01-01 00:00:00") and real() move the clock of a
running daemon, forked children included. The monotonic clock stays real
(FAKETIME_DONT_FAKE_MONOTONIC): asyncio's timers keep their pace whatever the wall clock does.

The file lives in its own world-readable directory under /tmp, so a daemon that drops to its
service users (the deployed mode) still reads it; LD_PRELOAD is loaded before the drop and
the daemon execs nothing that is setuid, so the preload stays in effect.
Never: touches the system clock, or leaves its directory behind after cleanup().
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

LIBRARIES = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))


def available() -> bool:
    return bool(LIBRARIES)


class MovableClock:
    def __init__(self, start: str = "1970-01-01 00:00:00") -> None:
        self.dir = tempfile.mkdtemp(prefix="mta-lite-faketime-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.spec = os.path.join(self.dir, "faketime.rc")
        self.at(start)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": LIBRARIES[0], "FAKETIME_TIMESTAMP_FILE": self.spec,
                "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def _write(self, text: str) -> None:
        tmp = self.spec + ".tmp"
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.spec)

    def at(self, when: str) -> None:
        """Processes see `when` (UTC) at their start, and the clock runs from there."""
        self._write("@" + when)

    def real(self) -> None:
        """The real time again (NTP has set the clock)."""
        self._write("+0")

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
