"""provision — talk to the relay box's serial console from a laptop.

    mta-lite-provision --port /dev/ttyUSB0 status
    mta-lite-provision --port /dev/ttyUSB0 show
    mta-lite-provision --port /dev/ttyUSB0 generations
    mta-lite-provision --port /dev/ttyUSB0 apply mta-lite.toml
    mta-lite-provision --port /dev/ttyUSB0 rollback [N]
    mta-lite-provision --port /dev/ttyUSB0 queue | flush
    mta-lite-provision --port /dev/ttyUSB0 test NAME            log in to relay NAME, step by step
    mta-lite-provision --port /dev/ttyUSB0 login NAME           OAuth2 device login for [oauth.NAME]
    mta-lite-provision --port /dev/ttyUSB0 log [N]              the last N log lines (default 20)
    mta-lite-provision --port /dev/ttyUSB0 report [--dir DIR]   save mta-lite-report.txt and .json

It opens the port (115200 8N1), says HELLO until the box answers (a USB serial adapter or a
pty that was opened after the box wrote its greeting has lost it), runs one command and
prints the box's answer: data lines without their `| ` prefix, then the final OK or ERR
line. `apply` sends the file as CONFIG BEGIN, DATA lines of base64, and CONFIG COMMIT with
its SHA-256; the box installs it only if size and checksum match and the config validates.
`report` asks for REPORT and then REPORT JSON (the same report, made once) and saves both in
DIR (default: here), byte for byte what a stick with an EXPORT file gets; it prints the OK
line, not the report. `test` and `report` wait for as long as the box is still sending: a
relay test gives each step 20 s. `login` prints the box's verification URL and code as soon
as they come, then waits (up to the provider code's 15 minutes) for the approval.
Exit status: 0 on OK, 1 on ERR, 2 on a usage error, a port that cannot be opened, or a box
that does not answer.

Guarantees: needs pyserial only (it imports nothing of the relay). It never prints the file it
uploads: the box's replies are all it shows, and the box never replies with a secret.
Must never: send a command before the box has answered HELLO, or wait without a deadline.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import time

import serial

BAUDRATE = 115200
GREETING_PREFIX = "OK mta-lite console "
# Bytes per DATA line: 576 bytes are 768 base64 characters, under the box's 1024-byte lines.
DATA_CHUNK_BYTES = 576
# The box answers HELLO within milliseconds; a try that gets no greeting in this time is
# repeated (the first may have been lost to the port-open race, or to line noise).
HELLO_WAIT_S = 0.5
HELLO_TRIES = 20
# Validating and installing a config takes well under a second on a Raspberry Pi.
REPLY_WAIT_S = 30.0
# A relay test gives each of its six steps 20 s; a report runs every relay's test and reads
# the log. The wait restarts with every line the box sends.
SLOW_REPLY_WAIT_S = 200.0
# `login` waits for a person to approve on another device: a device code lasts 15 minutes.
LOGIN_REPLY_WAIT_S = 17 * 60.0
REPORT_TEXT_NAME = "mta-lite-report.txt"
REPORT_JSON_NAME = "mta-lite-report.json"
# The box caps configs at 64 KiB; reading more than this from a file is pointless.
MAX_FILE_BYTES = 1024 * 1024
EXIT_OK, EXIT_ERR, EXIT_USAGE = 0, 1, 2
# What the box accepts after TEST RELAY (a bare TOML key): checked here to say so at once.
RELAY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ProvisionError(Exception):
    """The port cannot be used or the box does not answer (exit status 2)."""


class Console:
    """The box's console on an open pyserial port: lines out, replies in."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self._buffer = b""

    def send(self, line: str) -> None:
        self.port.write(line.encode("ascii") + b"\r\n")
        self.port.flush()

    def read_line(self, deadline: float) -> str | None:
        while b"\n" not in self._buffer:
            if time.monotonic() >= deadline:
                return None
            self._buffer += self.port.read(max(1, self.port.in_waiting))
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r").decode("ascii", "backslashreplace")

    def hello(self) -> str:
        for _ in range(HELLO_TRIES):
            # The CRLF first ends whatever partial line noise left in the box's buffer.
            self.send("\r\nHELLO")
            deadline = time.monotonic() + HELLO_WAIT_S
            while (line := self.read_line(deadline)) is not None:
                if line.startswith(GREETING_PREFIX):
                    return line
        raise ProvisionError(f"no answer to HELLO after {HELLO_TRIES} tries")

    def command(self, line: str, out=sys.stdout, wait_s: float = REPLY_WAIT_S,
                data: list[str] | None = None) -> tuple[bool, str]:
        """Send one command; print its data lines (or collect them into `data`); (ok, final
        line). Waits up to wait_s for the first line, and as long again after each."""
        self.send(line)
        deadline = time.monotonic() + wait_s
        while (reply := self.read_line(deadline)) is not None:
            deadline = time.monotonic() + wait_s
            if reply.startswith(GREETING_PREFIX):
                continue                # a late answer to a repeated HELLO
            if reply.startswith("| ") or reply == "|":
                if data is None:        # flushed: `login` must show its code while it waits
                    print(reply[2:], file=out, flush=True)
                else:
                    data.append(reply[2:])
            elif reply == "OK" or reply.startswith(("OK ", "ERR")):
                return reply.startswith("OK"), reply
        raise ProvisionError(f"no reply to {line.split()[0]} within {wait_s:.0f}s")


def upload(console: Console, data: bytes) -> tuple[bool, str]:
    ok, reply = console.command(f"CONFIG BEGIN {len(data)}")
    for start in range(0, len(data), DATA_CHUNK_BYTES):
        if not ok:
            return ok, reply
        ok, reply = console.command("DATA " + base64.b64encode(data[start:start + DATA_CHUNK_BYTES]).decode())
    if not ok:
        return ok, reply
    return console.command("CONFIG COMMIT " + hashlib.sha256(data).hexdigest())


def report(console: Console, directory: str) -> tuple[bool, str]:
    """REPORT, then REPORT JSON; both saved in `directory` as the stick's EXPORT writes them."""
    text: list[str] = []
    ok, reply = console.command("REPORT", wait_s=SLOW_REPLY_WAIT_S, data=text)
    if not ok:
        return ok, reply
    doc: list[str] = []
    ok, reply = console.command("REPORT JSON", wait_s=SLOW_REPLY_WAIT_S, data=doc)
    if not ok:
        return ok, reply
    saved = []
    for name, lines, eol in ((REPORT_TEXT_NAME, text, "\r\n"), (REPORT_JSON_NAME, doc, "\n")):
        path = os.path.join(directory, name)
        with open(path, "w", encoding="ascii", newline="") as handle:
            handle.write("".join(line + eol for line in lines))
        saved.append(path)
    return True, f"{reply}; saved {saved[0]} and {saved[1]}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="provision", description="The relay box's serial console.")
    parser.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("status", help="queue and relay status")
    sub.add_parser("show", help="the config in use, secrets masked")
    sub.add_parser("generations", help="kept config generations")
    apply = sub.add_parser("apply", help="upload and install a config file")
    apply.add_argument("file")
    rollback = sub.add_parser("rollback", help="install generation N (default: the one before)")
    rollback.add_argument("number", nargs="?", type=int)
    sub.add_parser("queue", help="mail waiting, and why the oldest messages wait")
    sub.add_parser("flush", help="try deferred mail again now")
    test = sub.add_parser("test", help="log in to a smarthost without sending mail, step by step")
    test.add_argument("name", help="the relay's name, as in [relays.NAME]")
    login = sub.add_parser("login", help="OAuth2 device login: a URL and a code to enter on a phone or laptop")
    login.add_argument("name", help="the provider's name, as in [oauth.NAME]")
    log = sub.add_parser("log", help="the last N lines of the relay's log, passwords masked")
    log.add_argument("count", nargs="?", type=int, metavar="N")
    rep = sub.add_parser("report", help="save the diagnostics report (as a stick's EXPORT gets it)")
    rep.add_argument("--dir", default=".", help="where to save mta-lite-report.txt and .json (default: here)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, console: Console, data: bytes) -> tuple[bool, str]:
    console.hello()
    simple = {"status": "STATUS", "show": "CONFIG SHOW", "generations": "CONFIG GENERATIONS", "queue": "QUEUE",
              "flush": "FLUSH"}
    if args.action in simple:
        return console.command(simple[args.action])
    if args.action == "rollback":
        return console.command("CONFIG ROLLBACK" + ("" if args.number is None else f" {args.number}"))
    if args.action == "test":
        return console.command(f"TEST RELAY {args.name}", wait_s=SLOW_REPLY_WAIT_S)
    if args.action == "login":
        return console.command(f"OAUTH LOGIN {args.name}", wait_s=LOGIN_REPLY_WAIT_S)
    if args.action == "log":
        return console.command("LOG" + ("" if args.count is None else f" {args.count}"))
    if args.action == "report":
        return report(console, args.dir)
    return upload(console, data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.action == "rollback" and args.number is not None and args.number < 0:
        print("provision: rollback N: N must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "log" and args.count is not None and args.count < 1:
        print("provision: log N: N must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.action in ("test", "login") and not RELAY_NAME.fullmatch(args.name):
        print(f"provision: {args.action} NAME: a name is letters, digits, - and _", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "report" and not os.path.isdir(args.dir):
        print(f"provision: report --dir {args.dir}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    data = b""
    if args.action == "apply":
        try:
            with open(args.file, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES)
        except OSError as exc:
            print(f"provision: {args.file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    try:
        with serial.serial_for_url(args.port, baudrate=BAUDRATE, timeout=0.05) as port:
            ok, reply = run(args, Console(port), data)
    except (serial.SerialException, OSError, ProvisionError) as exc:
        print(f"provision: {args.port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(reply)
    return EXIT_OK if ok else EXIT_ERR


if __name__ == "__main__":
    sys.exit(main())
