"""Where each key of a TOML document stands: a light scan that maps key paths to line numbers.

``tomllib`` gives values but no positions, and recipe errors must name the line. This scan reads
table headers, array-of-tables headers and ``key =`` lines; keys inside inline tables and arrays
resolve to the line of the nearest enclosing key, which is where a user looks first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KeyPath = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*(\]\]?)\s*(#.*)?$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MULTILINE_QUOTES = ('"""', "'''")


def _split_dotted(key: str) -> list[str] | None:
    """Split a dotted TOML key (``a."b.c".d``) into its parts; None if it is not a key."""
    parts: list[str] = []
    i, n = 0, len(key)
    while i < n:
        while i < n and key[i] in " \t":
            i += 1
        if i >= n:
            return None
        if key[i] in "\"'":
            quote = key[i]
            end = key.find(quote, i + 1)
            while quote == '"' and end > 0 and key[end - 1] == "\\":
                end = key.find(quote, end + 1)
            if end < 0:
                return None
            parts.append(key[i + 1 : end])
            i = end + 1
        else:
            match = _BARE_KEY.match(key, i)
            if not match:
                return None
            parts.append(match.group())
            i = match.end()
        while i < n and key[i] in " \t":
            i += 1
        if i < n:
            if key[i] != ".":
                return None
            i += 1
    return parts or None


def _key_of_assignment(line: str) -> list[str] | None:
    """The key of a ``key = value`` line, or None."""
    in_quote: str | None = None
    for i, char in enumerate(line):
        if in_quote:
            if char == in_quote:
                in_quote = None
        elif char in "\"'":
            in_quote = char
        elif char == "=":
            return _split_dotted(line[:i])
        elif char == "#":
            return None
    return None


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path the scan can see to its 1-based line number."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    open_quote: str | None = None
    depth = 0  # open brackets/braces of a value that spans lines
    for number, line in enumerate(text.splitlines(), start=1):
        if open_quote:
            if line.count(open_quote) % 2 == 1:
                open_quote = None
            continue
        if depth == 0:
            header = _HEADER.match(line)
            if header and len(header.group(1)) == len(header.group(3)):
                parts = _split_dotted(header.group(2))
                if parts is not None:
                    path = (*_resolve(parts[:-1], array_counts), parts[-1])
                    if header.group(1) == "[[":
                        index = array_counts.get(path, -1) + 1
                        array_counts[path] = index
                        path = (*path, index)
                    table = path
                    lines.setdefault(path, number)
                    continue
            key = _key_of_assignment(line)
            if key is not None:
                path = (*table, *key)
                for end in range(len(table) + 1, len(path) + 1):
                    lines.setdefault(path[:end], number)
        for quote in _MULTILINE_QUOTES:
            if line.count(quote) % 2 == 1:
                open_quote = quote
        depth = max(0, depth + _bracket_balance(line))
    return lines


def _resolve(parts: list[str], array_counts: dict[KeyPath, int]) -> KeyPath:
    """Turn header parts into a path, entering the latest element of each array of tables."""
    path: KeyPath = ()
    for part in parts:
        path = (*path, part)
        if path in array_counts:
            path = (*path, array_counts[path])
    return path


def _bracket_balance(line: str) -> int:
    """Net count of ``[``/``{`` opened by a line, ignoring strings and comments."""
    balance = 0
    in_quote: str | None = None
    escaped = False
    for char in line:
        if in_quote:
            if escaped:
                escaped = False
            elif char == "\\" and in_quote == '"':
                escaped = True
            elif char == in_quote:
                in_quote = None
        elif char in "\"'":
            in_quote = char
        elif char == "#":
            break
        elif char in "[{":
            balance += 1
        elif char in "]}":
            balance -= 1
    return balance


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor the scan saw."""
    for end in range(len(path), 0, -1):
        found = lines.get(path[:end])
        if found is not None:
            return found
    return None
