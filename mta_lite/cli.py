"""cli — the `mta-lite` command: parse arguments, load the config, dispatch to one command
(mta_lite.commands) or process (mta_lite.process). Nothing else happens here.

    mta-lite [-c FILE] serve | check [--fix] | config check|show|public | config apply FILE|- |
             config rollback [N] | config generations | sendmail ... | queue ... |
             status [--json] | relay test NAME | oauth login|import NAME | passwd NAME | demo

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

from mta_lite.config.load import load_config
from mta_lite.config.schema import DEFAULT_CONFIG_PATH
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
    oauth = sub.add_parser("oauth", help="authorise the relay at an OAuth2 provider (device login)")
    oauth.add_argument("action", choices=["login", "import"],
                       help="login: the device login; import: a refresh token read from standard input")
    oauth.add_argument("name", metavar="NAME", help="an [oauth.NAME] of the config")
    sub.add_parser("demo", help="run the relay with a local capture smarthost and sample mail")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = os.path.basename(sys.argv[0])
    config, rest = _split_global(argv)
    if name == "sendmail" or (rest and rest[0] == "sendmail"):
        from mta_lite.commands.sendmail import submit
        # Any local user submits; the password files are not theirs to read.
        return _run(config, lambda cfg: submit(cfg, rest[1:] if name != "sendmail" else rest),
                    EX_TEMPFAIL, secrets=False)
    if name == "mailq":
        rest = ["queue", "list"]
    args = _parser().parse_args((["-c", config] if config else []) + rest)
    path = _config_path(args.config)
    if args.command == "demo":
        from mta_lite.process.demo import run_demo
        return run_demo()
    if args.command == "passwd":      # needs no config: its output goes into one
        from mta_lite.commands.passwd import passwd_main
        return passwd_main(args.name)
    if args.command == "smtpd":
        from mta_lite.process.smtpd_service import run_smtpd_unit
        return run_smtpd_unit(path)
    if args.command == "serve":
        from mta_lite.process.master import serve     # the master never loads the secrets itself
        return serve(path)
    if args.command == "config" and args.action in ("apply", "rollback", "generations"):
        from mta_lite.commands.config import generations_main
        return generations_main(path, args.action, args.arg)
    # `config public` feeds the receiving side: it must work where the secrets are hidden.
    # `status` and `queue` need none, and must work when a password file is what is broken.
    secrets = not (args.command in ("status", "queue") or (args.command == "config" and args.action == "public"))
    return _run(args.config, lambda cfg: _dispatch(cfg, args), 1, secrets)


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


def _dispatch(cfg, args) -> int:
    """The commands that run on a loaded config."""
    if args.command == "qmgr":
        from mta_lite.process.qmgr_service import run_qmgr_unit
        return run_qmgr_unit(cfg)
    if args.command == "config":
        from mta_lite.commands import config
        if args.action == "check":      # it loaded: nothing to say
            return 0
        return config.show(cfg) if args.action == "show" else config.public(cfg)
    if args.command == "check":
        from mta_lite.commands.check import check_main
        return check_main(cfg, args.fix)
    if args.command == "relay":
        from mta_lite.commands.relaytest import relay_test
        return relay_test(cfg, args.name)
    if args.command == "oauth":
        from mta_lite.commands.oauthlogin import oauth_import, oauth_login
        return (oauth_login if args.action == "login" else oauth_import)(cfg, args.name)
    if args.command == "status":
        from mta_lite.commands.status import status_main
        return status_main(cfg, args.json)
    from mta_lite.commands.mailq import queue_main
    return queue_main(cfg, args.action, args.ids, args.json)


if __name__ == "__main__":
    sys.exit(main())
