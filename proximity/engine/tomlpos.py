"""Where each key and value sits in a TOML document (tomllib gives no positions).

A small recursive-descent scanner over *valid* TOML (run it after tomllib
accepted the text): it maps key paths such as ``("rules", 1, "cta", "title")``
or ``("zones", "coffee", "scanners", 0)`` to the 1-based line and column of
the value, and of the key or table header that introduced it. Arrays of
tables count their entries, so paths use the same indices as the parsed data
(and as pydantic's error locations).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

Path = tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class Position:
    line: int
    column: int


class Positions:
    """Key path → position of its value (``value``) and of its key or header (``key``)."""

    def __init__(self) -> None:
        self.value: dict[Path, Position] = {}
        self.key: dict[Path, Position] = {}

    def lookup(self, path: Path, prefer_key: bool = False) -> Position:
        """The position of ``path``, else of its nearest located ancestor, else 1:1."""
        first, second = (self.key, self.value) if prefer_key else (self.value, self.key)
        for end in range(len(path), 0, -1):
            sub = path[:end]
            if sub in first:
                return first[sub]
            if sub in second:
                return second[sub]
        return Position(1, 1)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def syntax_error(exc: tomllib.TOMLDecodeError) -> tuple[str, Position | None]:
    """tomllib's "msg (at line L, column C)" as the message and its position (None when
    tomllib gave none)."""
    message = str(exc)
    found = _TOML_POSITION.search(message)
    if found is None:
        return message, None
    return message[: found.start()], Position(int(found.group(1)), int(found.group(2)))


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.line_start = 0
        self.out = Positions()
        self.aot_counts: dict[Path, int] = {}
        self.table: Path = ()

    # -- low level ---------------------------------------------------------------------

    def pos(self) -> Position:
        return Position(self.line, self.i - self.line_start + 1)

    def peek(self, n: int = 0) -> str:
        j = self.i + n
        return self.text[j] if j < len(self.text) else ""

    def advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self.i >= len(self.text):
                return
            if self.text[self.i] == "\n":
                self.line += 1
                self.line_start = self.i + 1
            self.i += 1

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.advance()

    def skip_ws_nl_comments(self) -> None:
        while True:
            c = self.peek()
            if c in (" ", "\t", "\r", "\n"):
                self.advance()
            elif c == "#":
                self.skip_comment()
            else:
                return

    def skip_comment(self) -> None:
        while self.peek() not in ("\n", ""):
            self.advance()

    # -- strings and keys --------------------------------------------------------------

    def string(self) -> str:
        """Consume a string of any kind; return its (roughly unescaped) content."""
        quote = self.peek()
        triple = self.text.startswith(quote * 3, self.i)
        if triple:
            self.advance(3)
            start = self.i
            while self.i < len(self.text):
                if quote == '"' and self.peek() == "\\":
                    self.advance(2)
                    continue
                if self.text.startswith(quote * 3, self.i):
                    while self.peek(3) == quote:  # up to two quotes may end the content
                        self.advance()
                    content = self.text[start : self.i]
                    self.advance(3)
                    return content
                self.advance()
            return self.text[start:]
        self.advance()
        chars: list[str] = []
        while self.i < len(self.text) and self.peek() not in (quote, "\n"):
            if quote == '"' and self.peek() == "\\":
                chars.append(self.peek(1))
                self.advance(2)
                continue
            chars.append(self.peek())
            self.advance()
        self.advance()
        return "".join(chars)

    def key(self) -> tuple[list[str], Position]:
        """A dotted key; returns its parts and the position of its first part."""
        start = self.pos()
        parts: list[str] = []
        while True:
            self.skip_ws()
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                begin = self.i
                while self.peek() in _BARE and self.peek() != "":
                    self.advance()
                parts.append(self.text[begin : self.i])
            self.skip_ws()
            if self.peek() == ".":
                self.advance()
                continue
            return parts, start

    # -- structure ---------------------------------------------------------------------

    def resolve(self, parts: list[str], base: Path = ()) -> Path:
        """A key path with the current index of every array of tables along it."""
        path: list[str | int] = list(base)
        plain: list[str | int] = [p for p in base if isinstance(p, str)]
        for part in parts:
            path.append(part)
            plain.append(part)
            count = self.aot_counts.get(tuple(plain))
            if count is not None:
                path.append(count - 1)
        return tuple(path)

    def document(self) -> Positions:
        while True:
            self.skip_ws_nl_comments()
            c = self.peek()
            if c == "":
                return self.out
            if c == "[":
                self.header()
            else:
                self.keyval(self.table)

    def header(self) -> None:
        start = self.pos()
        array = self.text.startswith("[[", self.i)
        self.advance(2 if array else 1)
        parts, _ = self.key()
        self.advance(2 if array else 1)
        if array:
            plain = (*tuple(p for p in self.resolve(parts[:-1]) if isinstance(p, str)), parts[-1])
            self.aot_counts[plain] = self.aot_counts.get(plain, 0) + 1
        self.table = self.resolve(parts)
        self.out.key.setdefault(self.table, start)
        self.out.value.setdefault(self.table, start)

    def keyval(self, base: Path) -> None:
        parts, key_pos = self.key()
        if self.peek() != "=":  # not valid TOML: give up on this line
            self.skip_comment()
            if self.peek() == "\n":
                self.advance()
            return
        self.advance()
        self.skip_ws()
        path = tuple(base) + tuple(parts)
        for end in range(len(base) + 1, len(path)):  # dotted keys: intermediate tables
            self.out.key.setdefault(path[:end], key_pos)
        self.out.key[path] = key_pos
        self.value(path)

    def value(self, path: Path) -> None:
        self.out.value[path] = self.pos()
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:
            while self.peek() not in ("", ",", "]", "}", "\n", "#") and not (
                self.peek() in (" ", "\t") and self.peek(1) in ("#", "\n", "")
            ):
                self.advance()

    def array(self, path: Path) -> None:
        self.advance()
        index = 0
        while True:
            self.skip_ws_nl_comments()
            c = self.peek()
            if c in ("]", ""):
                self.advance()
                return
            if c == ",":
                self.advance()
                continue
            self.value((*path, index))
            index += 1

    def inline_table(self, path: Path) -> None:
        self.advance()
        while True:
            self.skip_ws()
            c = self.peek()
            if c in ("}", "", "\n"):
                self.advance()
                return
            if c == ",":
                self.advance()
                continue
            self.keyval(path)


def locate(text: str) -> Positions:
    """Positions of every key and value in ``text`` (which tomllib has accepted)."""
    return _Scanner(text).document()
