"""cli — the `mta-lite` command: parse arguments, load the config, run one subcommand.

    mta-lite [-c FILE] serve | check [--fix] | config check|show|public | config apply FILE|- |
             config rollback [N] | config generations | sendmail ... | queue ... |
             status [--json] | relay test NAME | passwd NAME | demo

The config file is -c/--config, else $MTA_LITE_CONFIG, else /etc/mta-lite/mta-lite.toml.
Invoked through a link named `sendmail` it behaves as `mta-lite sendmail`, and as `mailq`
it lists the queue. Exit status: 0 ok, 64 usage, 69 relay test failed, 75 temporary
failure, 78 config error.
Guarantees: a config error is one line naming file, key and problem, exit 78.
Must never: print a secret (config show masks them; errors never include them).
"""

from __future__ import annotations

import argparse
import os
import sys

import tomli_w

from mta_lite.config.schema import DEFAULT_CONFIG_PATH
from mta_lite.config.load import effective_dict, load_config
from mta_lite.errors import ConfigError, MtaLiteError, QueueIdError

EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 64, 75, 78


def _config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("MTA_LITE_CONFIG") or DEFAULT_CONFIG_PATH


def _split_global(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take -c/--config off the front; the rest is the subcommand and its arguments."""
    config = None
    while argv:
        if argv[0] in ("-c", "--config") and len(argv) > 1:
            config, argv = argv[1], argv[2:]
        elif argv[0].startswith("--config="):
            config, argv = argv[0].split("=", 1)[1], argv[1:]
        else:
            break
    return config, argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mta-lite", description="A small, durable SMTP relay.")
    parser.add_argument("-c", "--config", help=f"config file (default $MTA_LITE_CONFIG or {DEFAULT_CONFIG_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the relay in the foreground (supervises smtpd and qmgr)")
    sub.add_parser("smtpd", help="run only the receiving half (systemd unit)")
    sub.add_parser("qmgr", help="run only the delivering half (systemd unit)")
    check = sub.add_parser("check", help="as root: what the service users could not reach or must not read, "
                                         "with the command that fixes each (serve runs it before it listens)")
    check.add_argument("--fix", action="store_true", help="apply the spool's own owners and modes first "
                                                          "(never touches anything outside the spool)")
    cfg = sub.add_parser("config", help="check, show, install or roll back the configuration")
    cfg.add_argument("action", choices=["check", "show", "public", "apply", "rollback", "generations"],
                     help="public: the config without secrets, as the receiving side sees it; "
                          "apply FILE|-: validate and install a new config, keeping the old one; "
                          "rollback [N]: install an earlier generation")
    cfg.add_argument("arg", nargs="?", metavar="FILE|N")
    sub.add_parser("sendmail", help="submit a message from stdin (sendmail-compatible)")
    queue = sub.add_parser("queue", help="list and manage queued mail")
    queue.add_argument("action", choices=["list", "show", "why", "flush", "delete", "hold", "release"])
    queue.add_argument("ids", nargs="*", metavar="ID")
    queue.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="queue counts and relay states")
    status.add_argument("--json", action="store_true")
    relay = sub.add_parser("relay", help="check a relay account without sending mail")
    relay.add_argument("action", choices=["test"])
    relay.add_argument("name", metavar="NAME")
    passwd = sub.add_parser("passwd", help="print a [users.NAME] password hash for the submission port")
    passwd.add_argument("name", metavar="NAME")
    sub.add_parser("demo", help="run the relay with a local capture smarthost and sample mail")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = os.path.basename(sys.argv[0])
    config, rest = _split_global(argv)
    if name == "sendmail" or (rest and rest[0] == "sendmail"):
        # Any local user submits; the password files are not theirs to read.
        return _run(config, lambda cfg: _sendmail(cfg, rest[1:] if name != "sendmail" else rest),
                    EX_TEMPFAIL, secrets=False)
    if name == "mailq":
        rest = ["queue", "list"]
    args = _parser().parse_args((["-c", config] if config else []) + rest)
    if args.command == "demo":
        from mta_lite.process.demo import run_demo
        return run_demo()
    if args.command == "passwd":      # needs no config: its output goes into one
        from mta_lite.commands.passwd import passwd_main
        return passwd_main(args.name)
    if args.command == "smtpd":
        return _smtpd(args)
    if args.command == "serve":
        from mta_lite.process.master import serve     # the master never loads the secrets itself
        return serve(_config_path(args.config))
    if args.command == "config" and args.action in ("apply", "rollback", "generations"):
        return _generations(_config_path(args.config), args.action, args.arg)
    # `config public` feeds the receiving side: it must work where the secrets are hidden.
    # `status` and `queue` need none, and must work when a password file is what is broken.
    secrets = not (args.command in ("status", "queue") or (args.command == "config" and args.action == "public"))
    return _run(args.config, lambda cfg: _dispatch(cfg, args), 1, secrets)


def _smtpd(args) -> int:
    """The receiving half on its own (a systemd unit). Like the master, it takes its config
    from a short-lived `config public` process, so no secret ever enters it (S7)."""
    from mta_lite.process.services import SmtpdService, run_service
    from mta_lite.maillog import setup_logging
    from mta_lite.config.public import load_public_config
    try:
        cfg = load_public_config(_config_path(args.config))
        service = SmtpdService(cfg)         # loads the listeners' certificates and keys
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg)
    return run_service(service)


def _run(config: str | None, action, fail_status: int, secrets: bool = True) -> int:
    path = _config_path(config)
    try:
        cfg = load_config(path, secrets)
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        return action(cfg)
    except QueueIdError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return EX_USAGE
    except (MtaLiteError, OSError) as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return fail_status


def _generations(path: str, action: str, arg: str | None) -> int:
    """config apply / rollback / generations: these work on the file, not on a loaded config
    (the running one may be the broken one that a rollback repairs)."""
    from mta_lite.config import generations as configgen
    try:
        if action == "generations":
            for gen in configgen.generations(path):
                print(f"{gen.number:6d}  {gen.digest}  {gen.size:6d} bytes"
                      f"{'  (current)' if gen.current else ''}")
            return 0
        if action == "apply":
            if not arg:
                print("mta-lite: config apply needs a FILE (or - for standard input)", file=sys.stderr)
                return EX_USAGE
            result = configgen.apply_config(path, _read_candidate(arg), arg if arg != "-" else "stdin")
        else:
            if arg is not None and not arg.isdigit():
                print(f"mta-lite: config rollback: expected a generation number, got {arg!r}", file=sys.stderr)
                return EX_USAGE
            result = configgen.rollback(path, int(arg) if arg else None)
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(f"mta-lite: cannot install {path}: {exc.strerror}", file=sys.stderr)
        return EX_TEMPFAIL
    if result.changed:
        print(f"mta-lite: {result.describe()}")
    else:
        print(f"mta-lite: generation {result.generation} already installed (config {result.digest})")
    return 0


def _read_candidate(arg: str) -> bytes:
    from mta_lite.config.generations import MAX_CONFIG_BYTES
    if arg == "-":
        return sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
    try:
        with open(arg, "rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(arg, "", f"cannot read: {exc.strerror}") from None


def _sendmail(cfg, argv: list[str]) -> int:
    from mta_lite.commands.sendmail import submit
    return submit(cfg, argv)


def _dispatch(cfg, args) -> int:
    if args.command == "qmgr":
        from mta_lite.process.services import QmgrService, run_service
        from mta_lite.maillog import setup_logging
        setup_logging(cfg)
        return run_service(QmgrService(cfg))
    if args.command == "config":
        if args.action == "show":
            sys.stdout.write(tomli_w.dumps(effective_dict(cfg)))
        elif args.action == "public":
            from mta_lite.config.public import public_config_toml
            sys.stdout.buffer.write(public_config_toml(cfg))
        return 0
    if args.command == "check":
        return _check(cfg, args.fix)
    if args.command == "relay":
        from mta_lite.commands.relaytest import relay_test
        return relay_test(cfg, args.name)
    if args.command == "status":
        from mta_lite.status import format_status, read_status
        snapshot = read_status(cfg.spool_dir)
        print(snapshot.to_json() if args.json else format_status(snapshot))
        return 0
    return _queue_command(cfg, args)


def _check(cfg, fix: bool) -> int:
    """`mta-lite check`: one line per problem on stderr; exit 78 if any is fatal."""
    from mta_lite.commands.check import run_checks
    problems = run_checks(cfg, fix)
    for problem in problems:
        print(f"mta-lite: check: {problem.line()}", file=sys.stderr)
    if any(problem.fatal for problem in problems):
        return EX_CONFIG
    print(f"mta-lite: check: {cfg.path}: ok" + (f" ({len(problems)} warnings)" if problems else ""))
    return 0


def _queue_command(cfg, args) -> int:
    from mta_lite.commands import mailq
    from mta_lite.queue import Spool
    spool = Spool(cfg.spool_dir)
    if args.action in ("show", "why", "delete", "hold", "release") and not args.ids:
        print(f"mta-lite: queue {args.action} needs at least one queue ID", file=sys.stderr)
        return EX_USAGE
    if args.action == "list":
        print(mailq.list_json(spool) if args.json else mailq.format_list(mailq.entries(spool)))
    elif args.action == "show":
        for queue_id in args.ids:
            sys.stdout.buffer.write(mailq.show(spool, queue_id))
    elif args.action == "why":
        import time
        from mta_lite.commands.why import explain
        from mta_lite.status import read_status
        status = read_status(cfg.spool_dir)
        for queue_id in args.ids:
            print(explain(cfg, spool, queue_id, time.time(), status))
    else:
        count = getattr(mailq, args.action)(spool, *([args.ids] if args.action != "flush" else []))
        print(f"mta-lite: {args.action}: {count} message{'s' if count != 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
