"""Where things sit in a queue file's text: lines, columns, keys, values.

``tomllib`` and ``json`` return values but not where they came from, and a
message about a bad value must name its line and column. The scans here walk
a document that its parser has already accepted and note where each key and
value starts. They read only as much syntax as positions need (strings,
brackets, comments, headers); the values themselves always come from the
real parser, so a scan that misjudged something makes a message less
precise, never a queue wrong.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["TOML_KEY", "DocPath", "Lines", "Pos", "Where", "json_where", "toml_where"]

#: A position in a text: 1-based line and column (in characters), or None
#: when unknown.
Pos = tuple[int, int] | None

#: A path into a parsed document: keys and list indices, from the top.
DocPath = tuple[str | int, ...]

_TOML_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""

#: A TOML key, dotted or not, bare or quoted, as a regular expression.
TOML_KEY = rf"{_TOML_KEY_PART}(?:[ \t]*\.[ \t]*{_TOML_KEY_PART})*"

_TOML_KEY_PART_RE = re.compile(_TOML_KEY_PART)
_TOML_HEADER_RE = re.compile(rf"[ \t]*(\[\[?)[ \t]*({TOML_KEY})[ \t]*\]\]?")
_TOML_PAIR_RE = re.compile(rf"[ \t]*({TOML_KEY})[ \t]*=")
# The characters the scan of a TOML document stops at.
_TOML_SPECIAL_RE = re.compile(r"""[\n#"'\[\]{}]""")

_JSON_SCALAR_RE = re.compile(r"[^,\]}\s]+")
_JSON_SPACE_RE = re.compile(r"[ \t\n\r]*")
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class Lines:
    """Turns character offsets in a text into 1-based lines and columns."""

    def __init__(self, text: str) -> None:
        self._starts = [0]
        self._starts.extend(m.end() for m in re.finditer("\n", text))

    def at(self, offset: int) -> tuple[int, int]:
        """The line and column of a character offset (the end counts too)."""
        index = bisect_right(self._starts, offset) - 1
        return index + 1, offset - self._starts[index] + 1


class Where:
    """Where keys and values of a parsed TOML or JSON document sit in its text.

    A lookup that misses falls back to the nearest enclosing key or value, so
    a fault is reported as close to its cause as the text allows.
    """

    def __init__(
        self, lines: Lines, keys: dict[DocPath, int], values: dict[DocPath, int]
    ) -> None:
        self._lines = lines
        self._keys = keys
        self._values = values

    def key(self, path: DocPath) -> Pos:
        """Where the key at ``path`` starts (or the nearest thing known)."""
        return self._find(path, self._keys, self._values)

    def value(self, path: DocPath) -> Pos:
        """Where the value at ``path`` starts (or the nearest thing known)."""
        return self._find(path, self._values, self._keys)

    def at(self, offset: int) -> tuple[int, int]:
        """The line and column of a character offset in the text."""
        return self._lines.at(offset)

    def _find(
        self, path: DocPath, first: dict[DocPath, int], second: dict[DocPath, int]
    ) -> Pos:
        while True:
            offset = first.get(path, second.get(path))
            if offset is not None:
                return self._lines.at(offset)
            if not path:
                return None
            path = path[:-1]


def _toml_key_parts(key: str) -> tuple[str, ...]:
    parts: list[str] = []
    for match in _TOML_KEY_PART_RE.finditer(key):
        part = match.group()
        if part.startswith('"'):
            try:
                part = json.loads(part)
            except ValueError:
                # A TOML-only escape such as \e; close enough for finding lines.
                part = part[1:-1]
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def toml_where(text: str) -> Where:
    """Find where headers and keys of a valid TOML document are.

    This scans only as much TOML as positions need (headers, keys, strings,
    brackets and comments); the values themselves come from tomllib. Tables
    in an array (``[[job]]``) get their index in the path: ``("job", 2)``.
    """
    keys: dict[DocPath, int] = {}
    values: dict[DocPath, int] = {}
    counts: dict[DocPath, int] = {}  # array of tables -> index of its last table
    table: DocPath = ()

    def resolve(parts: Iterable[str]) -> DocPath:
        path: DocPath = ()
        for part in parts:
            path = (*path, part)
            if path in counts:
                path = (*path, counts[path])
        return path

    i, end, depth, line_start = 0, len(text), 0, True
    while i < end:
        if line_start and depth == 0:
            line_start = False
            header = _TOML_HEADER_RE.match(text, i)
            if header:
                parts = _toml_key_parts(header.group(2))
                at = header.start(1)
                if header.group(1) == "[[":
                    array = (*resolve(parts[:-1]), parts[-1])
                    counts[array] = counts.get(array, -1) + 1
                    keys.setdefault(array, at)
                    table = (*array, counts[array])
                else:
                    table = resolve(parts)
                    keys.setdefault(table, at)
                values.setdefault(table, at)
                i = header.end()
                continue
            pair = _TOML_PAIR_RE.match(text, i)
            if pair:
                parts = _toml_key_parts(pair.group(1))
                for length in range(1, len(parts) + 1):
                    keys.setdefault((*table, *parts[:length]), pair.start(1))
                i = pair.end()
                continue
        char = text[i]
        if char == "\n":
            line_start = True
            i += 1
        elif char == "#":
            newline = text.find("\n", i)
            i = end if newline < 0 else newline
        elif text.startswith('"""', i) or text.startswith("'''", i):
            i = _skip_toml_multiline(text, i)
        elif char in "\"'":
            i = _skip_toml_string(text, i)
        elif char in "[{":
            depth += 1
            i += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
            i += 1
        else:
            special = _TOML_SPECIAL_RE.search(text, i)
            i = special.start() if special else end
    return Where(Lines(text), keys, values)


def _skip_toml_multiline(text: str, i: int) -> int:
    quotes = text[i : i + 3]
    j = i + 3
    while j < len(text):
        if quotes == '"""' and text[j] == "\\":
            j += 2
        elif text.startswith(quotes, j):
            j += 3
            # Up to two more quotes may close the string as its content.
            while j < len(text) and text[j] == quotes[0]:
                j += 1
            return j
        else:
            j += 1
    return j


def _skip_toml_string(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text) and text[j] not in (quote, "\n"):
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return j + 1


def json_where(text: str) -> tuple[Where, list[tuple[str, int, int]]]:
    """Find where the keys and values of a valid JSON document are.

    Returns:
        The positions, and every key repeated within one object (which
        ``json`` silently resolves to its last value) as ``(key, offset,
        offset of the first)``.
    """
    lines = Lines(text)
    keys: dict[DocPath, int] = {}
    values: dict[DocPath, int] = {}
    repeats: list[tuple[str, int, int]] = []

    def space(i: int) -> int:
        match = _JSON_SPACE_RE.match(text, i)
        assert match is not None  # the pattern matches the empty string
        return match.end()

    def string_end(i: int) -> int:
        match = _JSON_STRING_RE.match(text, i)
        assert match is not None  # the document is valid
        return match.end()

    def walk(i: int, path: DocPath) -> int:
        i = space(i)
        values[path] = i
        char = text[i]
        if char == '"':
            return string_end(i)
        if char not in "[{":
            match = _JSON_SCALAR_RE.match(text, i)
            assert match is not None  # the document is valid
            return match.end()
        closing = "]" if char == "[" else "}"
        i = space(i + 1)
        if text[i] == closing:
            return i + 1
        index = 0
        while True:
            child: DocPath
            if char == "[":
                child = (*path, index)
                index += 1
            else:
                i = space(i)
                after = string_end(i)
                key = json.loads(text[i:after])
                child = (*path, key)
                if child in keys:
                    repeats.append((key, i, keys[child]))
                else:
                    keys[child] = i
                i = space(after) + 1  # past the ':'
            i = space(walk(i, child))
            if text[i] == closing:
                return i + 1
            i += 1  # past the ','

    try:
        walk(0, ())
    except RecursionError:
        # Positions only help messages; without them a fault has none.
        return Where(lines, {}, {}), []
    return Where(lines, keys, values), repeats
