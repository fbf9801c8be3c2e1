"""stickconfig — the stick's mta-lite.toml as the box reads it: [provision], "********"
placeholders, scrubbing, and whether it is installed already.

    stick = StickConfig.parse(text, source)     ConfigError: not TOML, or a wrong [provision]
    stick.scrub_secrets                         [provision] scrub_secrets, default true
    stick.match(configgen.generations(path))    the kept generation this file is, or None
    stick.install_text(box_secrets(path))       the text to validate and install
    stick.scrubbed()                            the whole file with every secret as "********"

[provision] belongs to the stick's file only: it is taken out before the config is validated
and installed, so the relay's schema never sees it. Its one key:

    [provision]
    scrub_secrets = true        # after the import, replace every password on the stick by "********"

A value "********" under a secret key (board/redact.py: password, password_hash, tokens) is a
placeholder for the secret the box has there: the file a scrubbed stick holds, or one copied
from `config show`. To tell whether a file is installed already, its placeholders are filled
from each kept generation in turn and the result compared, as parsed data, with that
generation as it was given (secrets included): comments and layout do not count. To install
it, they are filled from the config in use (relays by name, senders by address, users by name).

Every edit of the text is a span edit (board/tomlspans.py) checked by parsing the result and
comparing it with the data it must be; when that check fails, the text is re-serialised with
tomli_w instead (comments lost, the values right).
Guarantees: pure but for reading generation files; a ConfigError names the source and the key,
never a value. Must never: install a placeholder as a password, or keep a secret in a
scrubbed text.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

import tomli_w

from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite.config.schema import MASK
from mta_lite.errors import ConfigError

from mta_lite_board.redact import is_secret_key, secret_values
from mta_lite_board.tomlspans import SpanError, remove_statements, replace_values, toml_string

PROVISION = "provision"
PROVISION_KEYS = {"scrub_secrets": bool}
MASK_LITERAL = toml_string(MASK)


@dataclass
class StickConfig:
    source: str
    text: str                       # as on the stick, without a byte-order mark
    data: dict                      # parsed, [provision] included
    scrub_secrets: bool = True
    edited_in_place: bool = True    # False: an edit had to re-serialise the text

    @classmethod
    def parse(cls, text: str, source: str) -> "StickConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"not valid TOML: {exc}") from None
        options = data.get(PROVISION, {})
        if not isinstance(options, dict):
            raise ConfigError(source, PROVISION, "must be a table: [provision]")
        for key, value in options.items():
            if key not in PROVISION_KEYS:
                raise ConfigError(source, f"{PROVISION}.{key}", "unknown key (the one key is scrub_secrets)")
            if not isinstance(value, PROVISION_KEYS[key]):
                raise ConfigError(source, f"{PROVISION}.{key}", "expected true or false")
        return cls(source, text, data, options.get("scrub_secrets", True))

    @property
    def config(self) -> dict:
        """The config the file holds: its data without [provision]."""
        return {key: value for key, value in self.data.items() if key != PROVISION}

    def placeholders(self) -> list[tuple]:
        return [path for path in _secret_paths(self.config) if _get(self.config, path) == MASK]

    def clear_secrets(self) -> dict[tuple, str]:
        return secret_values(self.data)

    def match(self, kept: list[configgen.Generation]) -> configgen.Generation | None:
        """The newest kept generation this file is, placeholders filled from it."""
        for gen in kept:
            given = _load_generation(gen.path)
            if given is None:
                continue
            secrets = secret_values(given)
            filled = _filled(self.config, secrets.get)
            if filled is not None and filled == given:
                return gen
        return None

    def install_text(self, box: dict[tuple, str]) -> str:
        """The text without [provision], each placeholder replaced by the box's secret at
        the same place; ConfigError naming the first placeholder the box has nothing for."""
        def lookup(path: tuple) -> str | None:
            return box.get(normal_path(self.config, path))
        for path in self.placeholders():
            if lookup(path) is None:
                raise ConfigError(self.source, dotted(path), f'"{MASK}" keeps the secret the box has here, '
                                  "but the box has none for this key: write the secret itself")
        expected = _filled(self.config, lookup)
        if PROVISION not in self.data and not self.placeholders():
            return self.text            # nothing to change: the file is installed as it was given
        text = self._edit(self.text, lambda text: remove_statements(text, lambda path: path[:1] == (PROVISION,)),
                          {k: v for k, v in self.data.items() if k != PROVISION})
        values = {path: toml_string(lookup(path)) for path in self.placeholders()}
        return self._edit(text, lambda text: replace_values(text, values), expected)

    def scrubbed(self) -> str | None:
        """The stick's file with every clear secret replaced by "********"; None if it holds none."""
        secrets = self.clear_secrets()
        if not secrets:
            return None
        expected = copy.deepcopy(self.data)
        for path in secrets:
            _set(expected, path, MASK)
        return self._edit(self.text, lambda text: replace_values(text, {path: MASK_LITERAL for path in secrets}),
                          expected)

    def _edit(self, text: str, change: Callable[[str], str], expected: dict) -> str:
        try:
            changed = change(text)
            if tomllib.loads(changed) == expected:
                return changed
        except (SpanError, tomllib.TOMLDecodeError):
            pass
        self.edited_in_place = False
        return tomli_w.dumps(expected)


def box_secrets(config_path: str) -> dict[tuple, str]:
    """The secrets the box has now, by normal_path(): the installed generation as it was
    given, then the config as the relay loads it (password files read), which wins."""
    found: dict[tuple, str] = {}
    current = next((gen for gen in configgen.generations(config_path) if gen.current), None)
    given = _load_generation(current.path) if current else None
    if given is not None:
        found.update({normal_path(given, path): value for path, value in secret_values(given).items()})
    try:
        cfg = load_config(config_path, secrets=True)
    except ConfigError:
        return found
    for relay in cfg.relays.values():
        if relay.password is not None:
            found[("relays", relay.name, "password")] = relay.password.reveal()
    for sender in cfg.senders:
        if sender.password is not None:
            found[("senders", "@" + sender.address, "password")] = sender.password.reveal()
    for user in cfg.users.values():
        found[("users", user.name, "password_hash")] = user.password_hash
    for provider in cfg.oauth.values():
        if provider.client_secret is not None:
            found[("oauth", provider.name, "client_secret")] = provider.client_secret.reveal()
    return found


def normal_path(data: Any, path: tuple) -> tuple:
    """`path` with each position in a list of tables that have an address (senders) replaced
    by "@address", lower-cased, so that the owner may reorder them."""
    out, node = [], data
    for step in path:
        element = node[step] if isinstance(node, (dict, list)) else None
        if isinstance(step, int) and isinstance(element, dict) and isinstance(element.get("address"), str):
            out.append("@" + element["address"].lower())
        else:
            out.append(step)
        node = element
    return tuple(out)


def dotted(path: tuple) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _secret_paths(data: Any, path: tuple = ()) -> list[tuple]:
    found = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if is_secret_key(key) and isinstance(value, str):
            found.append(path + (key,))
        elif isinstance(value, (dict, list)):
            found += _secret_paths(value, path + (key,))
    return found


def _filled(config: dict, lookup: Callable[[tuple], str | None]) -> dict | None:
    """A copy of `config` with every placeholder replaced by lookup(path); None if one has none."""
    filled = copy.deepcopy(config)
    for path in _secret_paths(config):
        if _get(config, path) == MASK:
            value = lookup(path)
            if value is None:
                return None
            _set(filled, path, value)
    return filled


def _get(data: Any, path: tuple) -> Any:
    for step in path:
        data = data[step]
    return data


def _set(data: Any, path: tuple, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _load_generation(path: str) -> dict | None:
    """A generation as it was given, parsed; None if it cannot be read as TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.loads(handle.read(configgen.MAX_CONFIG_BYTES + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None
