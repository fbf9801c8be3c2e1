"""progress — the progress bars of mta-lite-flash, and how sizes are shown.

    with bar("write", total_bytes, stream) as b: b.update(n)
    human_bytes(n) -> "12.5 MiB";  human_disk(n) -> "31.9 GB"

The bars are tqdm's (bytes done, total, rate and time left), drawn on standard error only
when it is a terminal: piped or logged output gets the one-line results and nothing else.
Must never: write to standard output (results and the device list go there), or start a
thread (see bar()).
"""

from __future__ import annotations

from typing import TextIO

# Redrawing more often than this costs CPU and scrolls serial consoles for no gain.
REFRESH_S = 0.2
_IEC = ("B", "KiB", "MiB", "GiB", "TiB")


def bar(desc: str, total: int, stream: TextIO):
    """A byte-counting bar; disabled (every call a no-op) when `stream` is not a terminal."""
    from tqdm import tqdm               # imported here: the cli checks for it first, with a hint

    # tqdm starts a monitor thread with its first bar, even a disabled one. A Ctrl-C that the
    # kernel hands to that thread does not interrupt a read the main thread is blocked in (an
    # image coming slowly through a pipe): the tool would stop only when more data came. The
    # monitor only retunes the refresh rate of slow loops; keep to one thread.
    tqdm.monitor_interval = 0
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=stream,
                disable=not _isatty(stream), mininterval=REFRESH_S, dynamic_ncols=True, leave=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):    # a closed or non-file stream
        return False


def human_bytes(n: float) -> str:
    """Binary units, as tqdm and `ls -h` show data sizes."""
    value = float(n)
    for unit in _IEC:
        if abs(value) < 1024 or unit == _IEC[-1]:
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def human_disk(n: int) -> str:
    """Decimal gigabytes, as cards are sold (a "32 GB" card holds about 31.9 GB)."""
    if n >= 10**12:
        return f"{n / 10**12:.2f} TB"
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    return f"{n / 10**6:.1f} MB"


def human_rate(n: int, seconds: float) -> str:
    return f"{human_bytes(n / seconds)}/s" if seconds > 0 else "-"
