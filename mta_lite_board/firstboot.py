"""firstboot — install a mta-lite.toml dropped on the SD card's boot partition; set the hostname.

    python -m mta_lite_board.firstboot BOOT_DEVICE [--config FILE] [--user mta-config]
    (mta-lite-firstboot.service runs it as root at every boot, before the relay starts)

The owner writes the card, then copies mta-lite.toml into the boot partition's top folder from
any computer (it is FAT). At boot this reads the partition the way mta_lite_board.usbstick reads a
stick (mtools, never mounted; the same plan: mta-lite.toml, or ROLLBACK.TXT naming a
generation), validates and installs the file with configgen in a child that has dropped to
the config installer's user (C1, C2: kept as a generation, inline passwords moved to
secrets/), deletes it from the card once installed, and writes mta-lite-result.txt beside it:
"OK generation N installed (config DIGEST)" or "ERROR boot:mta-lite.toml: <key or line>:
<problem>" (the file then stays), and the time. A partition without either file is left
untouched. Last, the hostname is set from the installed config's `hostname` (the root file
system is read-only: nothing else would change it).

Exit status as mta_lite_board.usbstick: 0 installed, unchanged or nothing to do; 78 refused; 75 the
partition could not be read; 73 the box could not install it.

Guarantees: the config files the relay, the console and the stick share keep their owner
(the installing child runs as the same user as they do), so a later install over the console
or a stick works. A refused or unreadable file changes nothing on the box, and stays on the card.
SECURITY: the file is untrusted input exactly like a stick's: bounded reads, no name from the
card in a command line, errors without passwords (configgen's never hold one).
Must never: mount the boot partition, delete a file it did not install, or leave the password
of an installed config in a file on the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from dataclasses import replace
from typing import Callable

from mta_lite import maillog
from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite.errors import ConfigError
from mta_lite.process import privsep

from . import usbstick
from .fatwipe import rewrite_wiping
from .mtools import (MAX_STDERR_BYTES, ListingError, MtoolsRunner, Runner, StickReadError, list_root,
                     read_file, shown)
from .usbstick import Action, Outcome, StickResult

BOOT = "boot:"
RESULT_NAME = "mta-lite-result.txt"
INSTALL_USER = "mta-config"         # who installs configs on the box (console, stick): firmware/README.md
# The installing child answers with one JSON object: an outcome, a one-line message and a
# generation; a config error quotes at most a value from the file (usbstick cuts it at 1000).
MAX_CHILD_REPLY_BYTES = 8192

log = logging.getLogger("mta_lite_board.firstboot")
Installer = Callable[[str, Action, bytes], StickResult]


def resourced(exc: ConfigError) -> ConfigError:
    """usbstick's errors name the stick; on the card they name the boot partition."""
    return ConfigError(exc.path.replace(usbstick.STICK + "/", BOOT).replace(usbstick.STICK, BOOT.rstrip(":")),
                       exc.key, exc.problem)


def install(config_path: str, action: Action, data: bytes) -> StickResult:
    """Apply (or roll back to) what the card holds; as the stick does, with the card's names."""
    try:
        if action is Action.APPLY:
            applied = configgen.apply_config(config_path, usbstick.decode_config(data), BOOT + usbstick.CONFIG_NAME)
            return usbstick._applied(applied)
        number = usbstick.generation_number(data, configgen.generations(config_path))
        return usbstick._applied(configgen.rollback(config_path, number), f", rolled back to generation {number}")
    except ConfigError as exc:
        return usbstick._rejected(resourced(exc))
    except RecursionError:
        return usbstick._rejected(ConfigError(BOOT + usbstick.CONFIG_NAME, "", "not valid TOML: nested too deeply"))
    except OSError as exc:
        return StickResult(Outcome.INSTALL_FAILED, f"ERROR could not install the config on the box: "
                           f"{exc.strerror or type(exc).__name__} (the config in use is unchanged)")


def install_as(user_name: str) -> Installer:
    """install() in a forked child that has dropped to `user_name` (with its groups) for good."""
    def run(config_path: str, action: Action, data: bytes) -> StickResult:
        entry = privsep.ServiceUser.lookup(user_name)
        user = replace(entry, groups=tuple(os.getgrouplist(user_name, entry.gid)))
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:                            # the child: never returns
            os.close(reader)
            code = 1
            try:
                privsep.drop_to(user)
                result = install(config_path, action, data)
                os.write(writer, json.dumps([result.outcome.name, result.message, result.generation,
                                             result.digest]).encode()[:MAX_CHILD_REPLY_BYTES])
                code = 0
            finally:
                os._exit(code)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            reply = pipe.read(MAX_CHILD_REPLY_BYTES + 1)
        _, status = os.waitpid(pid, 0)
        try:
            name, message, generation, digest = json.loads(reply)
            return StickResult(Outcome[name], message, generation, digest)
        except (ValueError, KeyError, TypeError):
            return StickResult(Outcome.INSTALL_FAILED, "ERROR could not install the config on the box: the "
                               f"installer ended with status {os.waitstatus_to_exitcode(status)} (see the journal)")
    return run


def from_boot_partition(device: str, config_path: str, runner: Runner | None = None,
                        installer: Installer = install, now: Callable[[], float] = time.time) -> StickResult:
    """Act on what the boot partition's top folder holds (see the module docstring)."""
    runner = runner or MtoolsRunner()
    try:
        todo = usbstick.plan(list_root(runner, device))
        if todo.action is Action.NOTHING:
            return _report(device, StickResult(Outcome.NOTHING, "NOTHING to do: no config on the boot partition"))
        if todo.action is Action.REFUSE:
            result = usbstick._rejected(resourced(todo.error))
        else:
            name = usbstick.CONFIG_NAME if todo.action is Action.APPLY else usbstick.ROLLBACK_NAME
            result = installer(config_path, todo.action, read_file(runner, device, name, todo.size))
            if result.outcome in (Outcome.APPLIED, Outcome.UNCHANGED):
                result = _delete(runner, device, name, result)
    except (StickReadError, ListingError) as exc:
        return _report(device, StickResult(Outcome.READ_ERROR, f"boot partition not read, nothing changed: {exc}"))
    written = usbstick.write_result(runner, device, usbstick.format_result(result, now()), RESULT_NAME)
    return _report(device, replace(result, result_written=written))


def _delete(runner: Runner, device: str, name: str, result: StickResult) -> StickResult:
    """Remove the installed file: its password now lives in secrets/ only. Its clusters are
    zeroed first (fatwipe: the file rewritten empty), so the password does not stay behind in
    the FAT's free space either. A file that cannot be deleted does not undo the install: the
    result says so, and the next boot finds it installed already ("no change") and tries again."""
    try:
        wiped = rewrite_wiping(runner, device, name, b"")
        if not wiped.complete:
            result = replace(result, message=f"{result.message}; its old bytes could not all be wiped "
                                             f"from the boot partition: {wiped.problem}")
        done = runner(["mdel", "-i", device, "::/" + name], MAX_STDERR_BYTES, b"")
        problem = "" if done.returncode == 0 else (shown(done.stderr.decode("utf-8", "replace").strip())
                                                   or f"mdel exited with status {done.returncode}")
    except StickReadError as exc:
        problem = str(exc)
    if not problem:
        return result
    return replace(result, message=f"{result.message}; {name} could not be deleted from the boot partition: "
                   f"{problem}")


def _report(device: str, result: StickResult) -> StickResult:
    log.log(result.outcome.level, "%s: %s", shown(device), result.message)
    return result


def set_hostname(config_path: str, sethostname: Callable[[str], None] = socket.sethostname) -> str | None:
    """The installed config's hostname as the system's; None (and unchanged) without a config."""
    try:
        hostname = load_config(config_path, secrets=False).hostname
    except ConfigError as exc:
        log.info("hostname unchanged: %s", exc)
        return None
    try:
        sethostname(hostname)
    except OSError as exc:
        log.warning("hostname %s not set: %s", hostname, exc.strerror)
        return None
    log.info("hostname set to %s", hostname)
    return hostname


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mta_lite_board.firstboot",
                                     description="Install mta-lite.toml from the boot partition; set the hostname.")
    parser.add_argument("device", help="the boot partition (or a FAT image file)")
    parser.add_argument("--config", default=os.environ.get("MTA_LITE_CONFIG", usbstick.DEFAULT_CONFIG),
                        help="the config file to replace (default $MTA_LITE_CONFIG or %(default)s)")
    parser.add_argument("--user", default=INSTALL_USER, help="install as this user (default %(default)s)")
    parser.add_argument("--no-hostname", action="store_true", help="leave the hostname alone")
    args = parser.parse_args(argv)
    maillog.setup_logging()
    installer = install_as(args.user) if os.geteuid() == 0 else install
    result = from_boot_partition(args.device, args.config, installer=installer)
    if not args.no_hostname:
        set_hostname(args.config)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
