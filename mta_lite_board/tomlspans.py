"""tomlspans — where each key and value sits in a TOML text, to change a few values in place.

    spans, statements = scan(text)                  every value and every statement, by key path
    replace_values(text, {("relays", "isp", "password"): '"********"'})
    remove_statements(text, lambda path: path[:1] == ("provision",))
    toml_string(value)                              a value as a TOML basic string

A person wrote the stick's mta-lite.toml, with comments, blank lines and an order of their
own; re-serialising it would lose all of that. These edits replace the characters of one
value, or drop whole lines, and leave every other character as it was: a CRLF file stays
CRLF, comments stay where they were. Paths are tuples of keys, with positions as ints for
arrays and arrays of tables (`[[senders]]` -> ("senders", 0), ("senders", 1), ...).

The scanner knows TOML 1.0's syntax (bare, quoted and dotted keys, the four string kinds,
arrays and inline tables over several lines, comments), but it is only ever run on a text
that tomllib has already accepted, and its callers check every edit by parsing the result
again and comparing it with what they expected (board/stickconfig.py). Whatever it does not
understand raises SpanError, never a wrong edit.
Must never: change a character outside the spans it was asked to change; recurse without bound.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from typing import Callable

from mta_lite.errors import MtaLiteError

# tomllib itself recurses per nesting level; a config needs three or four.
MAX_DEPTH = 64
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_WHITESPACE = " \t"
_SCALAR_END = re.compile(r"[,\]}#\n]|\r\n")


class SpanError(MtaLiteError, ValueError):
    """The text has something the scanner does not handle; the caller falls back."""


@dataclass(frozen=True)
class Span:
    path: tuple
    start: int
    end: int
    kind: str               # "string", "scalar", "array" or "table" (an inline table)


@dataclass(frozen=True)
class Statement:
    path: tuple             # a header's table, or a key/value's full key
    start: int              # the start of its line
    end: int                # after its line end (or the end of the text)
    header: bool


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0
        self.spans: list[Span] = []
        self.statements: list[Statement] = []
        self.table: tuple = ()
        self.arrays: dict[tuple, int] = {}      # array-of-tables path -> entries seen

    # ---------------------------------------------------------------- characters
    def peek(self, count: int = 1) -> str:
        return self.text[self.pos:self.pos + count]

    def blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def comment(self) -> None:
        if self.peek() == "#":
            end = self.text.find("\n", self.pos)
            self.pos = len(self.text) if end < 0 else end

    def newline(self) -> bool:
        """Step over one CRLF or LF; False if there is none here."""
        size = 2 if self.peek(2) == "\r\n" else 1 if self.peek() == "\n" else 0
        self.pos += size
        return size > 0

    def line_end(self) -> None:
        """Blanks, a comment, then a newline or the end of the text."""
        self.blanks()
        self.comment()
        if not self.newline() and self.pos < len(self.text):
            raise SpanError(f"expected the end of a line at {self.pos}")

    def gaps(self) -> None:
        """Blanks, comments and newlines (inside arrays)."""
        while True:
            self.blanks()
            self.comment()
            if not self.newline():
                return

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise SpanError(f"expected {char!r} at {self.pos}")
        self.pos += 1

    # ---------------------------------------------------------------- document
    def document(self) -> None:
        while True:
            self.gaps()
            if self.pos >= len(self.text):
                return
            start = self.text.rfind("\n", 0, self.pos) + 1
            if self.peek() == "[":
                self.header(start)
            else:
                key = self.table + self.key()
                self.blanks()
                self.expect("=")
                self.blanks()
                self.value(key, 0)
                self.line_end()
                self.statements.append(Statement(key, start, self.pos, False))

    def header(self, start: int) -> None:
        double = self.peek(2) == "[["
        self.pos += 2 if double else 1
        self.blanks()
        keys = self.key()
        self.blanks()
        self.expect("]")
        if double:
            self.expect("]")
        path: tuple = ()
        for number, key in enumerate(keys):
            path += (key,)
            last = number == len(keys) - 1
            if last and double:
                index = self.arrays.get(path, 0)
                self.arrays[path] = index + 1
                path += (index,)
            elif path in self.arrays:
                path += (self.arrays[path] - 1,)
        self.table = path
        self.line_end()
        self.statements.append(Statement(path, start, self.pos, True))

    def key(self) -> tuple:
        parts = [self.simple_key()]
        while True:
            self.blanks()
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1
            self.blanks()
            parts.append(self.simple_key())

    def simple_key(self) -> str:
        if self.peek() in ("'", '"'):
            start = self.pos
            self.string(single_line=True)
            return tomllib.loads("k = " + self.text[start:self.pos])["k"]
        match = _BARE_KEY.match(self.text, self.pos)
        if not match:
            raise SpanError(f"expected a key at {self.pos}")
        self.pos = match.end()
        return match.group()

    # ---------------------------------------------------------------- values
    def value(self, path: tuple, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SpanError("nested too deeply")
        start, char = self.pos, self.peek()
        if char in ("'", '"'):
            self.string(single_line=False)
            kind = "string"
        elif char == "[":
            self.array(path, depth)
            kind = "array"
        elif char == "{":
            self.inline_table(path, depth)
            kind = "table"
        else:
            match = _SCALAR_END.search(self.text, self.pos)
            end = match.start() if match else len(self.text)
            self.pos = start + len(self.text[start:end].rstrip(_WHITESPACE))
            if self.pos == start:
                raise SpanError(f"expected a value at {start}")
            kind = "scalar"
        self.spans.append(Span(path, start, self.pos, kind))

    def string(self, single_line: bool) -> None:
        quote = self.peek()
        if not single_line and self.peek(3) == quote * 3:
            close = self.text.find(quote * 3, self.pos + 3) if quote == "'" else self._basic_end(self.pos + 3, quote * 3)
            if close < 0:
                raise SpanError("unterminated string")
            self.pos = close + 3
            for _ in range(2):          # """a"""" ends with a quote that belongs to the string
                if self.peek() == quote:
                    self.pos += 1
            return
        close = self.text.find("'", self.pos + 1) if quote == "'" else self._basic_end(self.pos + 1, '"')
        if close < 0 or "\n" in self.text[self.pos:close]:
            raise SpanError("unterminated string")
        self.pos = close + 1

    def _basic_end(self, pos: int, closing: str) -> int:
        """Where `closing` first appears unescaped from `pos`; -1 if it does not."""
        while pos < len(self.text):
            if self.text[pos] == "\\":
                pos += 2
            elif self.text.startswith(closing, pos):
                return pos
            else:
                pos += 1
        return -1

    def array(self, path: tuple, depth: int) -> None:
        self.expect("[")
        index = 0
        while True:
            self.gaps()
            if self.peek() == "]":
                self.pos += 1
                return
            self.value(path + (index,), depth + 1)
            index += 1
            self.gaps()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "]":
                raise SpanError(f"expected ',' or ']' at {self.pos}")

    def inline_table(self, path: tuple, depth: int) -> None:
        self.expect("{")
        self.blanks()
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            self.blanks()
            key = path + self.key()
            self.blanks()
            self.expect("=")
            self.blanks()
            self.value(key, depth + 1)
            self.blanks()
            if self.peek() == "}":
                self.pos += 1
                return
            self.expect(",")


def scan(text: str) -> tuple[list[Span], list[Statement]]:
    """Every value (scalars, strings, arrays, inline tables) and every statement of `text`."""
    scanner = _Scanner(text)
    try:
        scanner.document()
    except (tomllib.TOMLDecodeError, IndexError, RecursionError) as exc:
        raise SpanError(f"cannot follow the text: {type(exc).__name__}") from None
    return scanner.spans, scanner.statements


def replace_values(text: str, new: dict[tuple, str]) -> str:
    """`text` with the value at each path replaced by the given TOML literal; SpanError
    unless each path names exactly one value."""
    spans, _ = scan(text)
    chosen = []
    for path, literal in new.items():
        found = [span for span in spans if span.path == path]
        if len(found) != 1:
            raise SpanError(f"{len(found)} values at one path")
        chosen.append((found[0], literal))
    for span, literal in sorted(chosen, key=lambda item: item[0].start, reverse=True):
        text = text[:span.start] + literal + text[span.end:]
    return text


def remove_statements(text: str, unwanted: Callable[[tuple], bool]) -> str:
    """`text` without the lines of every header and key/value whose path is `unwanted`."""
    _, statements = scan(text)
    for statement in sorted(statements, key=lambda s: s.start, reverse=True):
        if unwanted(statement.path):
            text = text[:statement.start] + text[statement.end:]
    return text


def toml_string(value: str) -> str:
    """`value` as a TOML basic string (JSON's escapes are TOML's, but for DEL)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
