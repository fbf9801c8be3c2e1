"""oauthlogin — `mta-lite oauth login NAME`: authorise the relay at an OAuth2 provider with the
device authorization grant (RFC 8628) and keep the refresh token for the queue manager.

Prints the verification URL and the user code as soon as the provider gives them (stdout is
flushed line by line: the serial console streams it), waits for the person to approve on
another device, then stores the tokens:
  - as a seed, secrets/oauth-NAME.json beside the config (0640, the secrets directory's
    group): root and the console user can write there, the queue manager can read it and
    imports a seed newer than its own store at its next token request;
  - and, when this process may (root, or the queue manager's user), straight into the queue
    manager's store, spool/state/oauth/NAME.json, so it is used at once.
Then it rings the queue manager (like `queue flush`), so mail held for want of a token goes.
On a terminal (not on the serial console, whose lines are plain ASCII, nor in a pipe) a QR
code of the URL is drawn with segno (pure Python), for a phone's camera.
`mta-lite oauth import NAME` stores a refresh token obtained elsewhere (Google allows no device
login for Gmail: the token comes from a browser sign-in on a laptop) the same way; it reads the
token from standard input, never from the command line (which other users can see).
Exit status: 0 stored, 64 no such provider or no usable token, 69 refused or expired, 75 no answer.
Must never: print a token, a refresh token or the client secret.
"""

from __future__ import annotations

import asyncio
import sys
import time

from mta_lite.config.schema import Config
from mta_lite.errors import TokenError
from mta_lite.queue import doorbell
from mta_lite.smarthost.oauth.device import device_login
from mta_lite.smarthost.oauth.store import TokenRecord, store_for

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 64, 69, 75
MAX_TOKEN_CHARS = 4096


def _say(line: str) -> None:
    print(line, flush=True)


def _qr(url: str) -> None:
    """The URL as a QR code in the terminal (half-block characters: two rows per line)."""
    import segno        # only here: the relay's daemons never draw one
    segno.make(url, error="L").terminal(out=sys.stdout, compact=True)
    sys.stdout.flush()


def _user_grant(cfg: Config, name: str, out):
    """The [oauth.NAME] provider if it takes a user's refresh token; else None, said why."""
    provider = cfg.oauth.get(name)
    if provider is None:
        names = ", ".join(sorted(cfg.oauth)) or "none"
        out(f"mta-lite: no [oauth.{name}] in {cfg.path}; configured: {names}")
        return None
    if provider.grant != "refresh_token":
        out(f'mta-lite: [oauth.{name}] uses grant = "{provider.grant}": it needs no login '
            f'(the relay asks for its tokens itself); run `mta-lite relay test` to check it')
        return None
    return provider


def oauth_import(cfg: Config, name: str, source=sys.stdin, out=_say) -> int:
    """A refresh token from `source` (its first line) into the seed, as after a login."""
    if _user_grant(cfg, name, out) is None:
        return EX_USAGE
    token = source.readline(MAX_TOKEN_CHARS + 2).strip()
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        out(f"oauth {name}: expected one refresh token (printable ASCII, at most {MAX_TOKEN_CHARS} "
            "characters) on standard input")
        return EX_USAGE
    return _store(cfg, name, TokenRecord(refresh_token=token, obtained_at=time.time()), out, "imported")


def oauth_login(cfg: Config, name: str, out=_say) -> int:
    provider = _user_grant(cfg, name, out)
    if provider is None:
        return EX_USAGE
    try:
        tokens = asyncio.run(device_login(provider, out, show_url=_qr if sys.stdout.isatty() else None))
    except TokenError as exc:
        out(f"oauth {name}: login failed: {exc}")
        return EX_UNAVAILABLE if exc.refused else EX_TEMPFAIL
    if not tokens.refresh_token:
        out(f"oauth {name}: the provider gave no refresh token; add offline_access to scope (Microsoft) "
            "and log in again")
        return EX_UNAVAILABLE
    return _store(cfg, name, TokenRecord(tokens.access_token, tokens.expires_at, tokens.refresh_token,
                                         obtained_at=time.time()), out)


def _store(cfg: Config, name: str, record: TokenRecord, out, done: str = "approved") -> int:
    store = store_for(cfg.spool_dir, cfg.path)
    try:
        seed = store.write_seed(name, record)
    except OSError as exc:
        out(f"oauth {name}: cannot write {store.seed_path(name)}: {exc.strerror or exc}")
        return EX_TEMPFAIL
    try:
        store.load(name)            # imports the seed: used at once if we may write the store
        where = f"{seed} and {store.path(name)}"
    except OSError:
        where = f"{seed}; the relay takes it from there at its next try"
    out(f"oauth {name}: {done}; tokens stored in {where}")
    try:
        doorbell.ring(cfg.spool_dir, doorbell.FLUSH)
    except OSError:
        pass        # nobody to wake, or not ours to ring: the relay finds it at its next try
    return EX_OK
