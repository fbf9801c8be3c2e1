"""passwd — `mta-lite passwd NAME`: ask for a password, print the [users.NAME] table with
its scrypt hash (passhash.py) for the config.

Must never: print, log or keep the password itself; only its hash is printed.
"""

from __future__ import annotations

import getpass
import sys
from typing import Callable, TextIO

import tomli_w

from mta_lite.passhash import USER_NAME, hash_password

EX_USAGE, EX_DATAERR = 64, 65

def read_password(stdin: TextIO, ask: Callable[[str], str] = getpass.getpass) -> str | None:
    """From the terminal (asked twice, not echoed), else the first line of stdin."""
    if stdin.isatty():
        first = ask("Password: ")
        return first if ask("Again: ") == first else None
    return stdin.readline().rstrip("\r\n")


def config_snippet(name: str, hashed: str) -> str:
    """The [users.NAME] table to paste into the config; senders are left for the admin."""
    table = tomli_w.dumps({"users": {name: {"password_hash": hashed}}})
    return (table + f"# senders = [\"{name if '@' in name else name + '@example.com'}\"]"
            f"   # required: the addresses {name} may send as (\"@domain\" for a whole domain)\n")


def passwd_main(name: str, stdin: TextIO | None = None, stdout: TextIO | None = None,
                stderr: TextIO | None = None, ask: Callable[[str], str] = getpass.getpass) -> int:
    """`mta-lite passwd NAME`: print a [users.NAME] table with a fresh hash; exit status."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if not USER_NAME.match(name):
        print(f"mta-lite: passwd: user name {name!r}: use letters, digits and . _ @ + - "
              "(at most 64, starting with a letter or digit)", file=stderr)
        return EX_USAGE
    password = read_password(stdin, ask)
    if password is None:
        print("mta-lite: passwd: the two passwords differ; nothing written", file=stderr)
        return EX_DATAERR
    if not password:
        print("mta-lite: passwd: empty password refused", file=stderr)
        return EX_DATAERR
    stdout.write(config_snippet(name, hash_password(password.encode("utf-8"))))
    return 0
