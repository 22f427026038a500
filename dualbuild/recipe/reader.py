"""Typed reading of a parsed TOML document: every mistake becomes a Problem with its key and line.

The recipe loader reads through a ``Reader`` so that it can report every error in a file, not
just the first: each getter returns None on a bad value and records why.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Collection, Mapping
from typing import TypeGuard, TypeVar

from dualbuild.errors import Problem
from dualbuild.recipe.positions import KeyPath, line_of

_Choice = TypeVar("_Choice", bound=enum.StrEnum)
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def render_path(path: KeyPath) -> str:
    """Write a key path as a user reads it: ``stages[1].steps[0].copy``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE.match(part) else '"' + part.replace('"', '\\"') + '"'
            out += f".{name}" if out else name
    return out


def describe_value(value: object) -> str:
    """Name a TOML value's type for an error message, with the value when it is short."""
    match value:
        case bool():
            kind = "a boolean"
        case int():
            kind = "an integer"
        case float():
            kind = "a float"
        case str():
            kind = "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            kind = f"a {type(value).__name__}"
    shown = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{kind} ({shown})" if len(shown) <= 40 else kind


def is_str_list(value: object) -> TypeGuard[list[str]]:
    """True for a list whose items are all strings."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class Reader:
    """Collects problems while typed values are read out of a TOML document."""

    def __init__(self, file: str, lines: Mapping[KeyPath, int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []
        # Strings as written where build args were substituted (see dualbuild.recipe.args).
        self.written: dict[KeyPath, str] = {}
        # Values already refused (an undeclared arg): what a reader finds in them next is noise.
        self.refused: set[KeyPath] = set()

    def error(self, path: KeyPath, message: str, hint: str | None = None) -> None:
        """Record a problem at ``path`` (saying so when build args made its value)."""
        if path in self.refused:
            return
        written = next(
            (self.written[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.written), None
        )
        if written is not None:
            message += f" (after substituting build args into {written!r})"
        self.problems.append(
            Problem(
                file=self.file,
                key=render_path(path),
                message=message,
                line=line_of(self.lines, path),
                hint=hint,
            )
        )

    def table(
        self,
        value: object,
        path: KeyPath,
        allowed: Collection[str],
        required: Collection[str] = (),
        what: str = "table",
    ) -> dict[str, object] | None:
        """Check a table: its type, unknown keys (with a suggestion) and required keys."""
        if not isinstance(value, dict):
            self.error(path, f"expected a {what}, got {describe_value(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.unknown_key(path, key, allowed)
        for key in required:
            if key not in value:
                self.error((*path, key), f"required key is missing from {render_path(path) or 'the recipe'}")
        return value

    def unknown_key(self, path: KeyPath, key: str, allowed: Collection[str]) -> None:
        """Report a key the recipe format does not have, suggesting the closest one."""
        close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(allowed))}"
        where = render_path(path) or "the top level"
        self.error((*path, key), f"unknown key in {where}", hint)

    def string(
        self,
        value: object,
        path: KeyPath,
        *,
        pattern: re.Pattern[str] | None = None,
        rule: str = "",
        hint: str | None = None,
        allow_empty: bool = False,
    ) -> str | None:
        """Read a string, optionally matching ``pattern`` (``rule`` says what it must be)."""
        if not isinstance(value, str):
            quoted = None if isinstance(value, (list, dict)) else f'write it in quotes: "{value}"'
            self.error(path, f"expected a string, got {describe_value(value)}", quoted or hint)
            return None
        if not value and not allow_empty:
            self.error(path, "must not be empty", hint)
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.error(path, f"{value!r} is not {rule}", hint)
            return None
        return value

    def choice(
        self, table: Mapping[str, object], path: KeyPath, key: str, default: _Choice
    ) -> _Choice | None:
        """Read ``table[key]``, one of the values of ``default``'s enum (``default`` when absent)."""
        if key not in table:
            return default
        text = self.string(table[key], (*path, key))
        if text is None:
            return None
        kind = type(default)
        try:
            return kind(text)
        except ValueError:
            choices = ", ".join(f'"{member.value}"' for member in kind)
            self.error((*path, key), f"{text!r} is not one of {choices}", f"use one of {choices}")
            return None

    def integer(
        self, value: object, path: KeyPath, *, low: int | None = None, high: int | None = None
    ) -> int | None:
        """Read an integer within [low, high]."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer, got {describe_value(value)}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            self.error(path, f"{value} is out of range: must be {bounds}")
            return None
        return value

    def boolean(self, value: object, path: KeyPath) -> bool | None:
        """Read a boolean."""
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {describe_value(value)}")
            return None
        return value

    def string_list(
        self, value: object, path: KeyPath, *, allow_single: bool = False, allow_empty: bool = True
    ) -> list[str] | None:
        """Read an array of strings (or, with allow_single, one string standing for a list)."""
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error(path, f"expected an array of strings, got {describe_value(value)}")
            return None
        good = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.error((*path, index), f"expected a string, got {describe_value(item)}")
                good = False
        if good and not value and not allow_empty:
            self.error(path, "must not be empty")
            return None
        return value if good and is_str_list(value) else None

    def string_table(
        self,
        value: object,
        path: KeyPath,
        *,
        key_pattern: re.Pattern[str] | None = None,
        key_rule: str = "",
        key_hint: str | None = None,
    ) -> dict[str, str] | None:
        """Read a table of string values, checking each key against ``key_pattern``."""
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {describe_value(value)}")
            return None
        result: dict[str, str] = {}
        for key, item in value.items():
            good_key = True
            if key_pattern is not None and not key_pattern.fullmatch(key):
                self.error((*path, key), f"{key!r} is not {key_rule}", key_hint)
                good_key = False
            text = self.string(item, (*path, key), allow_empty=True)
            if good_key and text is not None:
                result[key] = text
        return result
