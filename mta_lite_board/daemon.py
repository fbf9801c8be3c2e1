"""daemon — mta-lite-board: the box's hardware side as one process of asyncio tasks.

    mta-lite-board [--config FILE] [--serial DEVICE] [--spool DIR] [--no-leds]
                   [--log-file FILE] [--relay-command CMD] [--runtime-dir DIR] [--no-clock]

--config defaults to $MTA_LITE_CONFIG, else /etc/mta-lite/mta-lite.toml; --spool to the
config's spool_dir (read without secrets, each time it is needed). With --serial the serial
console (board.console) runs on DEVICE; the status LEDs (board.leds) show the status file
of the spool unless --no-leds (no GPIO: no LEDs, one log line). The console's LOG and REPORT
read the journal, or --log-file; its QUEUE, TEST RELAY, FLUSH and REPORT run the relay's
command line, this Python's `-m mta_lite.cli` or --relay-command (board/relaycli.py). Unless
--no-clock, the clock check (board.clock) asks `[board] ntp_servers` and writes clock.json
into --runtime-dir (default /run/mta-lite-board), which the status page and the alert LED
read. Each board part is a named task factory given to
run(); a part that fails is logged and restarted with backoff, the others go on; one that
returns is done (LEDs on a board without GPIO). SIGTERM or SIGINT stops every part and the
process exits 0.

Guarantees: a config that does not load is logged and does not stop the daemon: the console
is the way to install a working one. Logs go to stderr, one line per event.
SECURITY: the console faces untrusted bytes (see board.console_protocol); the daemon itself
reads only its arguments and environment. The log filter masks the passwords of the config
that loaded at start.
Must never: be imported by mta_lite (board sits above it), or stop the relay: it is a
separate process that only reads the status file and installs configs through configgen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from typing import Awaitable, Callable, Sequence

from mta_lite.config.schema import DEFAULT_CONFIG_PATH, BoardConfig
from mta_lite.config.load import load_config
from mta_lite.errors import ConfigError
from mta_lite.maillog import setup_logging

from mta_lite.status import read_status

from mta_lite_board.clock import NTP_PORT, REPORT_NAME, RUNTIME_DIR, ClockCheck, read_alert
from mta_lite_board.console import FileActions, SerialConsole
from mta_lite_board.leds import serve_leds
from mta_lite_board.console_protocol import ConsoleProtocol, error_location
from mta_lite_board.logsource import default_source
from mta_lite_board.relaycli import DEFAULT_COMMAND, RelayCli

# A part that keeps failing is restarted at most this often: a bug must not become a busy loop.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("board")
Part = tuple[str, Callable[[], Awaitable[None]]]


async def run(parts: Sequence[Part]) -> int:
    """Run every part until SIGTERM or SIGINT; 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(_supervised(name, factory), name=name) for name, factory in parts]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


async def _supervised(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Run one part; a part that returns is done (e.g. LEDs on a board without GPIO), one
    that fails is restarted with backoff."""
    delay = RESTART_MIN_S
    while True:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:        # one failing part must not stop the others
            log.error("%s: internal error: %s; restarting in %.0fs", name, error_location(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)
            continue
        log.info("%s: finished", name)
        return


def console_part(config_path: str, device: str, spool_dir: str | None, log_file: str | None = None,
                 relay_command: tuple[str, ...] = DEFAULT_COMMAND) -> Part:
    relay = RelayCli(config_path, relay_command)
    actions = FileActions(config_path, spool_dir, relay, default_source(log_file, relay.children))

    def protocol() -> ConsoleProtocol:
        return ConsoleProtocol(actions, log=log.info)

    return "console", SerialConsole(device, protocol, children=actions.children).run


def leds_part(spool_dir: str, runtime_dir: str = RUNTIME_DIR) -> Part:
    """The status LEDs, from the status file the queue manager writes (board.leds) and the
    clock check's report (board.clock)."""
    report = os.path.join(runtime_dir, REPORT_NAME)
    return "leds", lambda: serve_leds(lambda: read_status(spool_dir), ntp_alert=lambda: read_alert(report))


def clock_part(servers, runtime_dir: str = RUNTIME_DIR, port: int = NTP_PORT) -> Part:
    """The clock check (board.clock): NTP offset into runtime_dir/clock.json."""
    return "clock", ClockCheck(servers, runtime_dir, port=port).run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mta-lite-board",
                                     description="mta-lite's hardware side: serial console and status LEDs")
    parser.add_argument("--config", default=os.environ.get("MTA_LITE_CONFIG") or DEFAULT_CONFIG_PATH,
                        help="the relay's config file (default: $MTA_LITE_CONFIG or %(default)s)")
    parser.add_argument("--serial", metavar="DEVICE", help="run the serial console on DEVICE (e.g. /dev/ttyS0)")
    parser.add_argument("--spool", metavar="DIR", help="the relay's spool (default: spool_dir of the config)")
    parser.add_argument("--no-leds", action="store_true", help="leave the GPIO pins alone")
    parser.add_argument("--log-file", metavar="FILE", help="LOG and REPORT read this file, not the journal")
    parser.add_argument("--runtime-dir", metavar="DIR", default=RUNTIME_DIR,
                        help="where the clock check writes clock.json (default: %(default)s)")
    parser.add_argument("--no-clock", action="store_true", help="do not ask NTP servers")
    parser.add_argument("--ntp-port", type=int, default=NTP_PORT, help=argparse.SUPPRESS)   # tests
    parser.add_argument("--relay-command", metavar="CMD",
                        help="the relay's command line for QUEUE, TEST RELAY, FLUSH and REPORT "
                             "(default: this Python's -m mta_lite.cli)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, secrets=True)
    except ConfigError as exc:
        cfg = None
        problem = str(exc)
    setup_logging(cfg)
    if cfg is None:
        log.warning("config: %s; the console still accepts a new one", problem)
    parts: list[Part] = []
    if args.serial:
        command = tuple(shlex.split(args.relay_command)) if args.relay_command else DEFAULT_COMMAND
        parts.append(console_part(args.config, args.serial, args.spool, args.log_file, command))
    else:
        log.info("no --serial DEVICE: the console is off")
    spool_dir = args.spool or (cfg.spool_dir if cfg else None)
    if args.no_leds:
        log.info("--no-leds: the LEDs are off")
    elif spool_dir:
        parts.append(leds_part(spool_dir, args.runtime_dir))
    else:
        log.warning("no spool directory known (no config, no --spool): the LEDs are off")
    if args.no_clock:
        log.info("--no-clock: the clock check is off")
    else:
        servers = cfg.board.ntp_servers if cfg else BoardConfig().ntp_servers
        parts.append(clock_part(servers, args.runtime_dir, args.ntp_port))
    return asyncio.run(run(parts))


if __name__ == "__main__":
    sys.exit(main())
