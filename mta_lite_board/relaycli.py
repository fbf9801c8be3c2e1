"""relaycli — what the relay knows, asked through its public command line.

    cli = RelayCli("/etc/mta-lite/mta-lite.toml")
    cli.status_text()   cli.status()        `mta-lite -c CONFIG status [--json]`
    cli.queue()         cli.why(ids)        `queue list --json`, `queue why ID...`
    cli.flush()                             `queue flush`
    cli.config_show()                       `config show` (the relay masks every secret)
    cli.relay_test(name, on_line)           `relay test NAME`, each step handed over as it comes
    cli.oauth_login(name, on_line)          `oauth login NAME`: the URL and code at once, then the result
    cli.children.cancel()                   from another thread: stop what runs

The relay's packages are rebuilt from time to time; its command line is the interface it
keeps. The command is this Python's `-m mta_lite.cli` by default (board and relay are one
installation, so always the same version); `command=` replaces it, e.g. with a wrapper that
runs it as the relay's own user on the box. Every run goes through board/command.py: a
deadline, bounded output, no shell, and `-c CONFIG` always given.
Errors: RelayCliError, one line naming the command and what went wrong (the relay's own
first line of complaint, which never holds a secret); nothing is retried.
Must never: pass anything but fixed words, queue IDs the relay listed itself and relay names
from the config as arguments; wait without a deadline.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from mta_lite.errors import MtaLiteError

from mta_lite_board.command import Children, CommandError, Finished, run_command

DEFAULT_COMMAND = (sys.executable, "-m", "mta_lite.cli")
# Reading status files and the queue directory takes well under a second on a Pi; a loaded
# box or a big queue gets generous room, a hung one does not keep a person waiting forever.
CLI_TIMEOUT_S = 60.0
# `relay test` gives each step (DNS, TCP, greeting, TLS, EHLO, AUTH) 20 s: six of them and
# the interpreter's start fit.
RELAY_TEST_TIMEOUT_S = 150.0
# `oauth login` waits for a person to approve on another device: the provider's code is valid
# for 15 minutes (Microsoft), plus the requests around it.
OAUTH_LOGIN_TIMEOUT_S = 17 * 60.0
# Ordinary output is a few KiB; `queue list --json` is ~300 bytes a message, and a box whose
# smarthost was gone for a week may hold tens of thousands.
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_QUEUE_LIST_BYTES = 32 * 1024 * 1024
# What the relay prints as a queue ID (and all the board ever passes back to it).
QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")
EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 64, 69, 75


class RelayCliError(MtaLiteError, OSError):
    """A relay command could not run, timed out, failed or printed something unexpected."""


@dataclass(frozen=True)
class RelayTest:
    name: str
    ok: bool
    lines: list[str] = field(default_factory=list)     # the steps and the summary, as printed
    problem: str = ""                                  # when it could not run to the end

    @property
    def summary(self) -> str:
        return self.lines[-1] if self.lines and not self.problem else self.problem


class RelayCli:
    """The relay's command line for one config file (see the module docstring)."""

    def __init__(self, config_path: str, command: Sequence[str] = DEFAULT_COMMAND,
                 timeout_s: float = CLI_TIMEOUT_S, relay_test_timeout_s: float = RELAY_TEST_TIMEOUT_S) -> None:
        self.config_path = config_path
        self.command = tuple(command)
        self.timeout_s, self.relay_test_timeout_s = timeout_s, relay_test_timeout_s
        self.children = Children()

    def _run(self, *args: str, limit: int = MAX_OUTPUT_BYTES, timeout_s: float | None = None,
             on_line: Callable[[str], None] | None = None) -> Finished:
        argv = [*self.command, "-c", self.config_path, *args]
        # Unbuffered: `relay test` prints a step as soon as it is done, and we pass it on.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        what = "mta-lite " + " ".join(args[:2])
        try:
            done = run_command(argv, timeout_s=timeout_s or self.timeout_s, limit_bytes=limit, env=env,
                               on_line=on_line, children=self.children)
        except CommandError as exc:
            raise RelayCliError(f"{what}: {exc}") from None
        if done.cancelled:
            raise RelayCliError(f"{what}: stopped")
        if done.timed_out:
            raise RelayCliError(f"{what}: no answer within {timeout_s or self.timeout_s:g} s")
        if done.overflow:
            raise RelayCliError(f"{what}: more than {limit} bytes of output")
        return done

    def _text(self, *args: str, limit: int = MAX_OUTPUT_BYTES) -> str:
        done = self._run(*args, limit=limit)
        if done.returncode != 0:
            raise RelayCliError(_complaint(done, "mta-lite " + " ".join(args[:2])))
        return done.stdout.decode("utf-8", "replace")

    def _json(self, *args: str, limit: int = MAX_OUTPUT_BYTES):
        text = self._text(*args, limit=limit)
        try:
            return json.loads(text)
        except ValueError:
            raise RelayCliError(f"mta-lite {' '.join(args[:2])}: not JSON") from None

    def status_text(self) -> str:
        return self._text("status")

    def status(self) -> dict:
        data = self._json("status", "--json")
        if not isinstance(data, dict):
            raise RelayCliError("mta-lite status --json: not an object")
        return data

    def queue(self) -> list[dict]:
        data = self._json("queue", "list", "--json", limit=MAX_QUEUE_LIST_BYTES)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise RelayCliError("mta-lite queue list: not a list of messages")
        return data

    def why(self, ids: list[str]) -> list[str]:
        """One line per queue ID, from `queue why`."""
        ids = [queue_id for queue_id in ids if QUEUE_ID.fullmatch(queue_id)]
        if not ids:
            return []
        return self._text("queue", "why", *ids).splitlines()

    def flush(self) -> str:
        return self._text("queue", "flush").strip().removeprefix("mta-lite: ")

    def config_show(self) -> str:
        return self._text("config", "show")

    def relay_test(self, name: str, on_line: Callable[[str], None] = lambda line: None,
                   timeout_s: float | None = None) -> RelayTest:
        """`relay test NAME`; never raises: a test that cannot run is a failed test."""
        return self._streamed(("relay", "test", name), on_line, timeout_s or self.relay_test_timeout_s,
                              (EX_OK, EX_UNAVAILABLE))

    def oauth_login(self, name: str, on_line: Callable[[str], None] = lambda line: None,
                    timeout_s: float = OAUTH_LOGIN_TIMEOUT_S) -> RelayTest:
        """`oauth login NAME` (the device login): each line handed over as it comes, the
        verification URL and code first; never raises."""
        return self._streamed(("oauth", "login", name), on_line, timeout_s, (EX_OK, EX_UNAVAILABLE, EX_TEMPFAIL))

    def _streamed(self, args: tuple[str, ...], on_line: Callable[[str], None], timeout_s: float,
                  answered: tuple[int, ...]) -> RelayTest:
        """A command whose lines go on as they come; ok on exit 0; a problem if it could not
        run to the end, or exited with a status outside `answered` (its own complaint)."""
        lines: list[str] = []

        def take(line: str) -> None:
            lines.append(line)
            on_line(line)
        name = args[-1]
        try:
            done = self._run(*args, on_line=take, timeout_s=timeout_s)
        except RelayCliError as exc:
            return RelayTest(name, False, lines, str(exc))
        if done.returncode in answered and lines:
            return RelayTest(name, done.returncode == EX_OK, lines)
        return RelayTest(name, False, lines, _complaint(done, "mta-lite " + " ".join(args[:2])))


def _complaint(done: Finished, what: str) -> str:
    """The relay's first line of complaint (stderr, else stdout), without its 'mta-lite: '."""
    for stream in (done.stderr, done.stdout):
        for line in stream.decode("utf-8", "replace").splitlines():
            if line.strip():
                return line.strip().removeprefix("mta-lite: ")
    return f"{what} exited with status {done.returncode}"
