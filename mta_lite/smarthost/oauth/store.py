"""store — OAuth tokens on disk: the queue manager's own store, and seeds from `oauth login`.

    TokenRecord                 one provider's tokens: access token and expiry, refresh token
                                and when it was last used, the seed it came from
    TokenStore(state_dir, seed_dir)
        load(name)              the record, after importing a seed newer than the store's
        save(name, record)      durably: temp file, fsync, rename, fsync dir (safeio)
        peek(name)              the record as it is on disk, read-only (status, relay test)
        write_seed(name, ...)   `mta-lite oauth login`: the first refresh token, for qmgr

Where (docs/deployed.md): the store is spool/state/oauth/NAME.json, 0600, in a directory
only the queue manager's user may enter (the spool's state/ is 0700): smtpd, the board and
local users cannot read it, and the installed config never holds a token. `oauth login` is
run by root or by the console user, who may not write there: it writes a seed,
secrets/oauth-NAME.json beside the config (0640, the secrets directory's group, which the
queue manager's user is in), and the queue manager imports a seed whose obtained_at is
newer than the one it imported last. From then on rotations live in the store only.
Guarantees: a rotated refresh token is on disk (fsynced, renamed, directory fsynced) before
save() returns, and the old file is replaced in one rename: a crash at any point leaves
either the old record or the new one, whole. A record or seed that cannot be read (missing,
damaged, not ours to read) reads as empty, never as an exception.
Must never: show a token in repr(), a log line or an exception.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields

from mta_lite import safeio

STORE_MODE, SEED_MODE, DIR_MODE = 0o600, 0o640, 0o700
SEED_PREFIX = "oauth-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# A record is a few kilobytes; a file much larger than this is not one of ours.
MAX_RECORD_BYTES = 256 * 1024


@dataclass
class TokenRecord:
    access_token: str = ""
    expires_at: float = 0.0
    refresh_token: str = ""
    refresh_used_at: float = 0.0        # the refresh token last got an answer (obtained or used)
    seed_obtained_at: float = 0.0       # the seed the refresh token came from (0: none)
    obtained_at: float = 0.0            # when a seed was written (seeds only)
    refresh_sent_at: float = 0.0        # a refresh request is under way since (0: none)

    def __repr__(self) -> str:
        return f"<tokens expiring at {self.expires_at:.0f}, refresh token {'kept' if self.refresh_token else 'none'}>"

    @classmethod
    def from_dict(cls, data: object) -> TokenRecord:
        if not isinstance(data, dict):
            return cls()
        record = cls()
        for field in fields(cls):
            value = data.get(field.name)
            if isinstance(value, str) and field.type == "str":
                setattr(record, field.name, value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and field.type == "float":
                setattr(record, field.name, float(value))
        return record

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def file_name(name: str) -> str:
    return _UNSAFE.sub("_", name)[:64] + ".json"


def _read(path: str) -> TokenRecord | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
        return TokenRecord.from_dict(json.loads(data)) if len(data) <= MAX_RECORD_BYTES else None
    except (OSError, ValueError):
        return None


class TokenStore:
    """The queue manager's token files (state_dir) and the login's seeds (seed_dir)."""

    def __init__(self, state_dir: str, seed_dir: str = "") -> None:
        self.state_dir, self.seed_dir = state_dir, seed_dir

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, file_name(name))

    def seed_path(self, name: str) -> str:
        return os.path.join(self.seed_dir, SEED_PREFIX + file_name(name)) if self.seed_dir else ""

    def peek(self, name: str) -> TokenRecord:
        return _read(self.path(name)) or TokenRecord()

    def load(self, name: str) -> TokenRecord:
        """The store's record; a newer seed's refresh token replaces its own (and is saved)."""
        record = self.peek(name)
        seed = _read(self.seed_path(name)) if self.seed_dir else None
        if seed is None or not seed.refresh_token or seed.obtained_at <= record.seed_obtained_at:
            return record
        record = TokenRecord(seed.access_token, seed.expires_at, seed.refresh_token,
                             refresh_used_at=seed.obtained_at, seed_obtained_at=seed.obtained_at)
        self.save(name, record)
        return record

    def save(self, name: str, record: TokenRecord) -> None:
        """Durably replace the record (OSError if the disk or the directory refuses)."""
        self._ensure_dir()
        owner = _dir_owner(self.state_dir)
        safeio.atomic_write(self.path(name), record.to_bytes(), mode=STORE_MODE, owner=owner)

    def write_seed(self, name: str, record: TokenRecord) -> str:
        """The seed for the queue manager, group-readable by the secrets directory's group."""
        if not self.seed_dir:
            raise OSError("no secrets directory for the seed")
        os.makedirs(self.seed_dir, mode=0o750, exist_ok=True)
        st = os.stat(self.seed_dir)
        owner = (os.geteuid(), st.st_gid) if os.geteuid() == 0 else None
        safeio.atomic_write(self.seed_path(name), record.to_bytes(), mode=SEED_MODE, owner=owner)
        return self.seed_path(name)

    def _ensure_dir(self) -> None:
        """state/oauth, owned like state/; never the spool itself (FileNotFoundError before
        the relay first made its spool: `oauth login` then leaves the seed alone)."""
        if not os.path.isdir(self.state_dir):
            try:
                os.mkdir(self.state_dir, DIR_MODE)
            except FileExistsError:
                pass
            parent = _dir_owner(os.path.dirname(self.state_dir))
            if parent is not None:
                os.chown(self.state_dir, *parent)


def _dir_owner(path: str) -> tuple[int, int] | None:
    """Root writing into the queue manager's directory (relay test, oauth login) gives the
    file to the directory's owner, so the queue manager can replace it later."""
    if os.geteuid() != 0:
        return None
    st = os.stat(path)
    return st.st_uid, st.st_gid


def store_for(spool_dir: str, config_path: str) -> TokenStore:
    """The store of a relay: spool/state/oauth, and the seeds in secrets/ beside its config."""
    return TokenStore(os.path.join(spool_dir, "state", "oauth"),
                      os.path.join(os.path.dirname(os.path.abspath(config_path)), "secrets"))
