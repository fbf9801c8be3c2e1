"""page.cli — the command line of mta-lite-page.

    mta-lite-page address [--config FILE] --out FILE
        As root, before the page starts (systemd's ExecStartPre=+): write `[board] http` of the
        config ("" = off) to FILE, 0644, and beside it config.json: the config's digest and
        its generation number (generations/ is root's and mta-config's only). A config that
        does not load (or none yet, on a fresh card) keeps FILE as it is (the page goes on at
        the address it had), or writes "" (off) if there is none; never an error.
    mta-lite-page serve [--spool DIR] [--board-run DIR] (--listen HOST:PORT | --listen-file FILE)
                        [--user USER]
        Serve the status page. An empty address means the page is off: exit 0 at once.
        With --user, started as root: bind, enter the spool, drop to USER, then serve.

Why the address comes through a file: the page's user must not read the config (it holds
the relay's whole setup and sits next to the secrets), so the one value the page needs is
handed over by a root step of its unit, which reads the config and nothing else. The board
daemon could write it too, but then the page would depend on the board daemon's start.
Guarantees: `serve` reads nothing before the drop but its arguments and the address file.
Must never: let `serve` open the config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys

from mta_lite import safeio
from mta_lite.config.generations import generations
from mta_lite.config.load import load_config
from mta_lite.config.schema import DEFAULT_CONFIG_PATH
from mta_lite.errors import ConfigError
from mta_lite.maillog import setup_logging

from mta_lite_board.page.server import Page, Server, drop_privileges

log = logging.getLogger("page")
EX_CONFIG = 78
DEFAULT_SPOOL = "/var/spool/mta-lite"
DEFAULT_BOARD_RUN = "/run/mta-lite-board"
ADDRESS = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)")
MAX_ADDRESS_BYTES = 300
CONFIG_INFO_FILE = "config.json"


def parse_address(text: str) -> tuple[str, int] | None:
    """("0.0.0.0", 8080) for "0.0.0.0:8080", ("::", 8080) for "[::]:8080"; None for ""."""
    text = text.strip()
    if not text:
        return None
    match = ADDRESS.fullmatch(text)
    if not match or not 0 < int(match.group(2) or match.group(4)) < 65536:
        raise ValueError(f"not an address like 0.0.0.0:8080: {text!r}")
    return match.group(1) or match.group(3), int(match.group(2) or match.group(4))


def write_address(config_path: str, out: str) -> int:
    """`address`: [board] http of the config into `out`."""
    try:
        cfg = load_config(config_path, secrets=False)
    except ConfigError as exc:
        # Never a failed start: systemd would retry every few seconds for as long as a fresh
        # card has no config. The path unit starts the page again when the config changes.
        if os.path.exists(out):
            log.warning("%s; the status page keeps its address", exc)
        else:
            log.warning("%s; the status page is off until a config loads", exc)
            safeio.atomic_write(out, b"\n", mode=0o644)
        return 0
    safeio.atomic_write(out, (cfg.board.http + "\n").encode(), mode=0o644)
    current = next((g.number for g in generations(config_path) if g.current), None)
    info = {"digest": cfg.digest, "generation": current}
    safeio.atomic_write(config_info_path(out), json.dumps(info).encode(), mode=0o644)
    log.info("status page: %s", cfg.board.http or "off ([board] http is empty)")
    return 0


def config_info_path(listen_file: str) -> str:
    """config.json beside the address file: what the root step knows of the config."""
    return os.path.join(os.path.dirname(os.path.abspath(listen_file)), CONFIG_INFO_FILE)


def read_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if args.listen is not None:
        return parse_address(args.listen)
    with open(args.listen_file, "rb") as handle:
        return parse_address(handle.read(MAX_ADDRESS_BYTES).decode("utf-8", "replace"))


async def serve(address: tuple[str, int], spool: str, board_run: str | None, user: str | None,
                config_info: str | None = None) -> int:
    server = Server(Page(spool, board_run, config_info))
    listener = await server.start(*address)     # as root if started so: a port below 1024 works
    if user:
        os.chdir(spool)       # reached as root; afterwards only what the user may open by name
        drop_privileges(user)
        server.page.spool_dir = "."
    if os.access(DEFAULT_CONFIG_PATH, os.R_OK):         # asked, never opened
        log.warning("this user could read %s: run the page under its unit (InaccessiblePaths=) "
                    "or as a user the config's mode keeps out", DEFAULT_CONFIG_PATH)
    log.info("status page on http://%s:%d/ (read-only)", *address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with listener:
        await stop.wait()
    log.info("stopped")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mta-lite-page", description="mta-lite's read-only status page")
    sub = parser.add_subparsers(dest="command", required=True)
    address = sub.add_parser("address", help="write [board] http of the config to a file (run as root)")
    address.add_argument("--config", default=os.environ.get("MTA_LITE_CONFIG") or DEFAULT_CONFIG_PATH)
    address.add_argument("--out", required=True, metavar="FILE")
    run = sub.add_parser("serve", help="serve the status page")
    run.add_argument("--spool", default=DEFAULT_SPOOL, metavar="DIR")
    run.add_argument("--board-run", default=DEFAULT_BOARD_RUN, metavar="DIR",
                     help="the board daemon's runtime directory, with its clock.json (default: %(default)s)")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="HOST:PORT")
    where.add_argument("--listen-file", metavar="FILE", help="a file holding HOST:PORT (or nothing: off)")
    run.add_argument("--user", help="started as root: drop to this user after binding")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(None)
    if args.command == "address":
        return write_address(args.config, args.out)
    try:
        address = read_address(args)
    except (OSError, ValueError) as exc:
        log.error("status page address: %s", exc)
        return EX_CONFIG
    if address is None:
        log.info("status page off ([board] http is empty)")
        return 0
    try:
        info = config_info_path(args.listen_file) if args.listen_file else None
        return asyncio.run(serve(address, args.spool, args.board_run, args.user, info))
    except (OSError, KeyError) as exc:
        log.error("status page: cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
