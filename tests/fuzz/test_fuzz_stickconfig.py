"""Fuzz the stick file's span editor (board/tomlspans.py) and scrubbing (board/stickconfig.py).

Peer: none. Hypothesis builds configs with secrets of any text (quotes, backslashes, control
characters, non-ASCII) under every secret key, in every TOML layout a person or a tool writes:
tomli_w's output, then comments, blank lines, CRLF, literal and multi-line strings, inline
tables and dotted keys. Properties: scrubbing leaves no secret in the text, reads back as the
same data with every secret "********", and changes nothing outside the secrets' spans; the
scanner finds each scalar where its text reads back as its value; nothing raises but
SpanError (which callers fall back from).
"""

from __future__ import annotations

import tomllib

import tomli_w
from hypothesis import example, given, strategies as st

from mta_lite.config.schema import MASK
from mta_lite_board.stickconfig import StickConfig
from mta_lite_board.tomlspans import SpanError, scan
from tests.fuzz.profiles import fuzz_settings

# Any text a password can be (everything but surrogates: TOML is UTF-8), after a mark that
# nothing else in the file holds, so that "no secret left" is "no mark left".
MARK = "\u00a7"
secret_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).map(lambda s: MARK + s)
plain = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, blacklist_characters="\"'\\"), max_size=20)


def _quote(value: str, style: int) -> str:
    """One of TOML's four string forms, where the value allows it."""
    if style == 1 and "'" not in value and "\n" not in value and value.isprintable():
        return f"'{value}'"
    if style == 2 and "'''" not in value and not value.endswith("'") and all(c.isprintable() or c == "\n" for c in value):
        return f"'''{value}'''"
    if style == 3 and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"""{value}"""'
    return tomli_w.dumps({"k": value})[4:-1]


@st.composite
def stick_file(draw) -> tuple[str, dict[tuple, str]]:
    """(text, {path: secret}) of a config in a layout a person might write."""
    secrets: dict[tuple, str] = {}
    lines = [f"# {draw(plain)}", f"hostname = {_quote(draw(plain), draw(st.integers(0, 3)))}"]
    if draw(st.booleans()):
        lines.append(f"provision.scrub_secrets = {draw(st.sampled_from(['true', 'false']))}")
    for number in range(draw(st.integers(1, 3))):
        name = f"r{number}"
        secret = draw(secret_text)
        key = draw(st.sampled_from(["password", "oauth_token", "client_secret"]))
        secrets[("relays", name, key)] = secret
        style = draw(st.integers(0, 3))
        if draw(st.booleans()):
            lines += ["", f"[relays.{name}]   # {draw(plain)}", f'host = "h{number}"',
                      f"{key} = {_quote(secret, style)}  # {draw(plain)}"]
        else:
            lines += ["", "[relays]", f'{name} = {{ host = "h{number}", {key} = {tomli_w.dumps({"k": secret})[4:-1]} }}']
    for number in range(draw(st.integers(0, 2))):
        secret = draw(secret_text)
        secrets[("senders", number, "password")] = secret
        lines += ["", "[[senders]]", f'address = "s{number}@lan.test"', f"password = {_quote(secret, draw(st.integers(0, 3)))}"]
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(lines) + eol, secrets


def _valid(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


@fuzz_settings(300)
@given(case=stick_file())
@example(case=('[relays.a]\npassword = """\u00a7x""""\n', {("relays", "a", "password"): '\u00a7x"'}))
@example(case=('[[senders]]\naddress = "s0@lan.test"\npassword = "\u00a7\x85"\n',      # NEL: a line break to Python
               {("senders", 0, "password"): "\u00a7\x85"}))
def test_scrub_any_secret_any_layout_leaves_no_secret_and_same_data(case):
    text, secrets = case
    if not _valid(text):        # a layout/value pair TOML does not allow (duplicate [relays])
        return
    data = tomllib.loads(text)
    stick = StickConfig.parse(text, "usb")
    scrubbed = stick.scrubbed()
    for path in secrets:
        node = data
        for step in path:
            node = node[step]
        assert node == secrets[path]
    parsed = tomllib.loads(scrubbed)
    for path in secrets:
        node = parsed
        for step in path:
            node = node[step]
        assert node == MASK
    assert MARK not in scrubbed
    assert parsed.keys() == data.keys()
    if stick.edited_in_place and not any("\n" in secret or "\r" in secret for secret in secrets.values()):
        # Every other character is where it was: the text minus the masks is the text minus
        # its secrets' literals, so the lines without a secret are the same lines.
        unchanged = [line for line in text.split("\n") if MARK not in line]
        assert [line for line in scrubbed.split("\n") if MASK not in line] == unchanged


@fuzz_settings(300)
@given(case=stick_file())
def test_scan_every_scalar_span_reads_back_as_its_value(case):
    text, _ = case
    if not _valid(text):
        return
    try:
        spans, _ = scan(text)
    except SpanError:
        return
    data = tomllib.loads(text)
    for span in spans:
        if span.kind not in ("string", "scalar"):
            continue
        node = data
        for step in span.path:
            node = node[step]
        assert tomllib.loads("k = " + text[span.start:span.end])["k"] == node


@fuzz_settings(300)
@given(text=st.text(max_size=300))
def test_scan_any_text_spans_or_span_error(text):
    try:
        spans, statements = scan(text)
    except SpanError:
        return
    # Whatever it found lies inside the text, in order: a replacement never cuts outside it.
    assert all(0 <= item.start <= item.end <= len(text) for item in [*spans, *statements])
    assert [s.start for s in statements] == sorted(s.start for s in statements)
