r"""The build context's ignore file: ``.dockerignore`` patterns, matched the way Docker matches them.

Docker reads the file with moby's ``ignorefile.ReadAll`` and matches with its ``patternmatcher``
(``MatchesOrParentMatches``); this module follows both, rule for rule:

- A line whose first column is ``#`` is a comment; other lines are trimmed (Go's whitespace), and
  empty ones skipped. A leading ``!`` makes an exception. The pattern is cleaned as Go's
  ``filepath.Clean`` cleans it and a leading ``/`` is dropped: ``/foo``, ``./foo`` and ``foo/`` all
  mean ``foo``, relative to the context root.
- ``*`` and ``?`` never match ``/``; ``[...]`` is a class (``^`` negates it); ``\`` escapes the
  next character; ``**`` matches any number of directories, none included; a pattern that starts
  with ``**`` only has to match the end of a path, one that ends with ``**`` only its start.
- A pattern matches a path when it matches the path or one of its parent directories, so an
  excluded directory excludes its contents; the last pattern that matches decides, so a later
  ``!`` line brings files back, even from inside an excluded directory.

Inside brackets the characters keep the meaning ``filepath.Match`` gives them (``[*]`` is a
star); moby pastes the bracket's text into a regular expression, where ``[*]`` means something
else entirely. Nobody writes that on purpose, and Docker's own docs promise filepath.Match.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

IGNORE_FILES = (".dualbuildignore", ".dockerignore")
# Go's unicode.IsSpace, which strings.TrimSpace trims: Python's str.isspace also counts the
# information separators U+001C..U+001F, which Go keeps.
_GO_SPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace() and not 0x1C <= c <= 0x1F)
_UTF8_BOM = "\ufeff"


class _Kind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    REGEX = "regex"


class PatternError(ValueError):
    r"""A line Docker refuses (a bare ``!``, a trailing ``\``, a malformed ``[...]``).

    Attributes:
        line: The line's number in the file (1-based; 0 while it is not known yet).
    """

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class Pattern:
    """One pattern of an ignore file.

    Attributes:
        text: The cleaned pattern, without its ``!``.
        exception: Whether it is a ``!`` line, bringing paths back.
        line: Its line in the file (1-based).
    """

    text: str
    exception: bool
    line: int
    kind: _Kind
    regex: re.Pattern[str] | None

    def matches(self, path: str) -> bool:
        """Whether the pattern matches ``path`` itself (no parent directories)."""
        match self.kind:
            case _Kind.EXACT:
                return path == self.text
            case _Kind.PREFIX:
                return path.startswith(self.text[:-2])
            case _Kind.SUFFIX:
                suffix = self.text[2:]
                # "**/foo" matches "foo" too: the "/" belongs to the "**".
                return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
            case _Kind.REGEX:
                assert self.regex is not None
                return self.regex.match(path) is not None

    def may_match_below(self, directory: str) -> bool:
        """Whether some path strictly inside ``directory`` might match (never False when one does)."""
        below = directory + "/"
        match self.kind:
            case _Kind.EXACT:
                return self.text.startswith(below)
            case _Kind.PREFIX:
                prefix = self.text[:-2]
                return below.startswith(prefix) or prefix.startswith(below)
            case _Kind.SUFFIX:
                return True
            case _Kind.REGEX:
                # A class may match "/" ([^a] does), an escape may hide one, "**" spans any
                # number of them: such patterns are assumed to reach anywhere.
                if "[" in self.text or "\\" in self.text or "**" in self.text:
                    return True
                parts, inside = self.text.split("/"), directory.split("/")
                if len(parts) <= len(inside):
                    return False
                return all(
                    _compile_regex(part).match(name) for part, name in zip(parts, inside, strict=False)
                )


@dataclass(frozen=True)
class IgnoreRules:
    """The patterns of one ignore file (none when the context has no ignore file).

    Attributes:
        file: The file's name in the context (``.dualbuildignore`` or ``.dockerignore``), if any.
        patterns: Its patterns in file order.
    """

    file: str | None = None
    patterns: tuple[Pattern, ...] = ()

    def deciding(self, path: str) -> Pattern | None:
        """The pattern that excludes ``path`` (relative to the context, ``/``-separated), if any."""
        if path in ("", "."):
            return None  # the context itself is never excluded, as in Docker
        parents = path.split("/")[:-1]
        prefixes = ["/".join(parents[: count + 1]) for count in range(len(parents))]
        excluded_by: Pattern | None = None
        for pattern in self.patterns:
            # Only an exception can change an excluded path, only an exclusion an included one.
            if pattern.exception != (excluded_by is not None):
                continue
            if pattern.matches(path) or any(pattern.matches(prefix) for prefix in prefixes):
                excluded_by = None if pattern.exception else pattern
        return excluded_by

    def excludes(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, ``/``-separated) is left out."""
        return self.deciding(path) is not None

    def may_include_below(self, directory: str) -> bool:
        """Whether an exception might bring back something inside an excluded ``directory``."""
        return any(p.exception and p.may_match_below(directory) for p in self.patterns)


def parse(text: str, file: str) -> IgnoreRules:
    """The rules of an ignore file's text.

    Raises:
        PatternError: a line Docker refuses (its ``line`` says which).
    """
    patterns = []
    lines = text.split("\n")
    if lines and lines[0].startswith(_UTF8_BOM):
        lines[0] = lines[0][len(_UTF8_BOM) :]
    for number, raw in enumerate(lines, start=1):
        # bufio.ScanLines: "\n" ends a line, and a "\r" before it is dropped.
        line = raw.removesuffix("\r")
        if line.startswith("#"):
            continue
        pattern = _read_line(line)
        if pattern is None:
            continue
        try:
            patterns.append(_pattern(pattern, number))
        except PatternError as error:
            raise PatternError(f"{line.strip(_GO_SPACE)!r}: {error.message}", number) from None
    return IgnoreRules(file=file, patterns=tuple(patterns))


def _read_line(line: str) -> str | None:
    """What ignorefile.ReadAll makes of a line: trimmed, cleaned, no leading "/"; None if empty."""
    pattern = line.strip(_GO_SPACE)
    if not pattern:
        return None
    exception = pattern.startswith("!")
    if exception:
        pattern = pattern[1:].strip(_GO_SPACE)
    if pattern:
        pattern = go_clean(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
    return "!" + pattern if exception else pattern


def _pattern(text: str, line: int) -> Pattern:
    """What patternmatcher.New makes of a line ReadAll returned (it trims and cleans it again)."""
    text = go_clean(text.strip(_GO_SPACE))
    exception = text.startswith("!")
    if exception:
        if len(text) == 1:
            raise PatternError('illegal exclusion pattern: "!"')
        text = text[1:]
    kind, regex = _compile(text)
    return Pattern(text=text, exception=exception, line=line, kind=kind, regex=regex)


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` on a ``/``-separated path (posixpath.normpath keeps a leading "//")."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _compile(text: str) -> tuple[_Kind, re.Pattern[str] | None]:
    """The pattern's kind, as patternmatcher's compile decides it, and its expression if it needs one.

    Raises:
        PatternError: a trailing backslash, or a malformed class.
    """
    regex = ["^"]
    kind = _Kind.EXACT
    position, count = 0, len(text)
    iteration = 0
    while position < count:
        char = text[position]
        position += 1
        if char == "*":
            if position < count and text[position] == "*":
                position += 1
                if position < count and text[position] == "/":
                    position += 1  # "**/" is "**"
                if position == count:
                    if kind is _Kind.EXACT:
                        kind = _Kind.PREFIX
                    else:
                        regex.append(".*")
                        kind = _Kind.REGEX
                else:
                    regex.append("(?:.*/)?")
                    kind = _Kind.REGEX
                if iteration == 0:
                    kind = _Kind.SUFFIX
            else:
                regex.append("[^/]*")
                kind = _Kind.REGEX
        elif char == "?":
            regex.append("[^/]")
            kind = _Kind.REGEX
        elif char == "\\":
            if position == count:
                raise PatternError("a pattern cannot end with a backslash")
            regex.append(re.escape(text[position]))
            position += 1
            kind = _Kind.REGEX
        elif char == "[":
            members, position = _read_class(text, position)
            regex.append(members)
            kind = _Kind.REGEX
        elif char == "]":
            regex.append(re.escape(char))
            kind = _Kind.REGEX
        elif char == "^":
            # moby leaves "^" unescaped: an anchor, so a pattern with one inside never matches.
            regex.append("^")
        else:
            regex.append(re.escape(char))
        iteration += 1
    if kind is not _Kind.REGEX:
        return kind, None
    return kind, re.compile("".join(regex) + r"\Z")


def _compile_regex(text: str) -> re.Pattern[str]:
    """``text`` as one regular expression, whatever kind patternmatcher would give it."""
    kind, regex = _compile(text)
    if regex is not None:
        return regex
    if kind is _Kind.EXACT:
        return re.compile(re.escape(text) + r"\Z")
    return re.compile(".*")  # a "**" part matches any name


def _read_class(text: str, position: int) -> tuple[str, int]:
    """A ``[...]`` class read as filepath.Match reads it (from after the ``[``), as a Python class.

    Raises:
        PatternError: the class is empty, unterminated, or has a backward or open-ended range.
    """
    negated = position < len(text) and text[position] == "^"
    if negated:
        position += 1
    ranges: list[str] = []
    while True:
        if position < len(text) and text[position] == "]" and ranges:
            position += 1
            break
        low, position = _class_char(text, position)
        high = low
        if text[position] == "-":
            high, position = _class_char(text, position + 1)
        if high < low:
            raise PatternError(f"the range {low}-{high} in [...] runs backwards")
        ranges.append(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}")
    return "[" + ("^" if negated else "") + "".join(ranges) + "]", position


def _class_char(text: str, position: int) -> tuple[str, int]:
    r"""One member of a class (``\`` escapes); like Go's getEsc, something must follow it."""
    if position >= len(text):
        raise PatternError("unterminated [...] class")
    if text[position] in "-]":
        raise PatternError("malformed [...] class")
    if text[position] == "\\":
        position += 1
        if position >= len(text):
            raise PatternError("unterminated [...] class")
    char = text[position]
    position += 1
    if position >= len(text):
        raise PatternError("unterminated [...] class")
    return char, position
