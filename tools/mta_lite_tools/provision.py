"""provision — talk to the relay box's serial console from a laptop.

    mta-lite-provision --port /dev/ttyUSB0 status
    mta-lite-provision --port /dev/ttyUSB0 show
    mta-lite-provision --port /dev/ttyUSB0 generations
    mta-lite-provision --port /dev/ttyUSB0 apply mta-lite.toml
    mta-lite-provision --port /dev/ttyUSB0 rollback [N]

It opens the port (115200 8N1), says HELLO until the box answers (a USB serial adapter or a
pty that was opened after the box wrote its greeting has lost it), runs one command and
prints the box's answer: data lines without their `| ` prefix, then the final OK or ERR
line. `apply` sends the file as CONFIG BEGIN, DATA lines of base64, and CONFIG COMMIT with
its SHA-256; the box installs it only if size and checksum match and the config validates.
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
# The box caps configs at 64 KiB; reading more than this from a file is pointless.
MAX_FILE_BYTES = 1024 * 1024
EXIT_OK, EXIT_ERR, EXIT_USAGE = 0, 1, 2


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

    def command(self, line: str, out=sys.stdout) -> tuple[bool, str]:
        """Send one command; print its data lines; (ok, final line)."""
        self.send(line)
        deadline = time.monotonic() + REPLY_WAIT_S
        while (reply := self.read_line(deadline)) is not None:
            if reply.startswith(GREETING_PREFIX):
                continue                # a late answer to a repeated HELLO
            if reply.startswith("| ") or reply == "|":
                print(reply[2:], file=out)
            elif reply == "OK" or reply.startswith(("OK ", "ERR")):
                return reply.startswith("OK"), reply
        raise ProvisionError(f"no reply to {line.split()[0]} within {REPLY_WAIT_S:.0f}s")


def upload(console: Console, data: bytes) -> tuple[bool, str]:
    ok, reply = console.command(f"CONFIG BEGIN {len(data)}")
    for start in range(0, len(data), DATA_CHUNK_BYTES):
        if not ok:
            return ok, reply
        ok, reply = console.command("DATA " + base64.b64encode(data[start:start + DATA_CHUNK_BYTES]).decode())
    if not ok:
        return ok, reply
    return console.command("CONFIG COMMIT " + hashlib.sha256(data).hexdigest())


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
    return parser.parse_args(argv)


def run(args: argparse.Namespace, console: Console, data: bytes) -> tuple[bool, str]:
    console.hello()
    simple = {"status": "STATUS", "show": "CONFIG SHOW", "generations": "CONFIG GENERATIONS"}
    if args.action in simple:
        return console.command(simple[args.action])
    if args.action == "rollback":
        return console.command("CONFIG ROLLBACK" + ("" if args.number is None else f" {args.number}"))
    return upload(console, data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.action == "rollback" and args.number is not None and args.number < 0:
        print("provision: rollback N: N must be 0 or more", file=sys.stderr)
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
