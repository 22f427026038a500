"""Template variables for ``dualbuild new``: their types, parsing, and the ``toml`` filter."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import jinja2

from dualbuild.errors import TemplateError, UsageError
from dualbuild.recipe.rules import AC_IDENTIFIER, DOCKER_TAG, is_docker_repository

VARIABLE_KEYS = ("type", "default", "help", "choices", "pattern")
_VARIABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TRUE = ("true", "yes", "y", "on", "1")
_FALSE = ("false", "no", "n", "off", "0")
# Control characters, and the lone surrogates that undecodable command-line bytes become.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# TOML basic strings take no raw control character, quote or backslash (toml.io, "String").
_TOML_ESCAPES = {code: f"\\u{code:04x}" for code in (*range(0x20), 0x7F)} | {34: '\\"', 92: "\\\\"}

Value = str | int | bool | tuple[str, ...]


class VarType(enum.StrEnum):
    """What a template variable holds; a ``list`` is typed as comma-separated text."""

    STR = "str"
    INT = "int"
    BOOL = "bool"
    LIST = "list"


@dataclass(frozen=True, kw_only=True)
class Variable:
    """One value a template asks for."""

    name: str
    type: VarType
    help: str
    # A str default may hold Jinja over the variables declared before it, e.g. "{{ name | basename }}".
    default: Value | None = None
    choices: tuple[Value, ...] = ()
    pattern: str | None = None

    def parse(self, text: str) -> Value:
        """Convert text typed on the command line or at a prompt, and check it.

        Raises:
            UsageError: the text is not of the variable's type, not one of its choices, or does
                not match its pattern (or, for ``name`` and ``version``, the recipe's rules).
        """
        value = self._convert(text)
        if self.choices and value not in self.choices:
            raise self._invalid(text, f"is not one of: {', '.join(self.format(c) for c in self.choices)}")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str) and self.pattern and not re.fullmatch(self.pattern, item):
                raise self._invalid(item, f"does not match the pattern {self.pattern}")
        if self.name == "name" and not (AC_IDENTIFIER.fullmatch(text) and is_docker_repository(text)):
            raise self._invalid(text, "is not a valid image name")
        if self.name == "version" and not DOCKER_TAG.fullmatch(text):
            raise self._invalid(text, "is not a valid Docker tag")
        return value

    def format(self, value: Value) -> str:
        """Write a value the way it is typed (the inverse of ``parse``)."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return ",".join(value) if isinstance(value, tuple) else str(value)

    def _convert(self, text: str) -> Value:
        # One-line values only: a newline rendered into a TOML comment would start a new key.
        if _UNPRINTABLE.search(text):
            raise self._invalid(text, "holds a control character or is not valid UTF-8")
        match self.type:
            case VarType.INT:
                try:
                    return int(text.strip())
                except ValueError:
                    raise self._invalid(text, "is not an integer") from None
            case VarType.BOOL:
                if text.strip().lower() not in _TRUE + _FALSE:
                    raise self._invalid(text, "is not true or false")
                return text.strip().lower() in _TRUE
            case VarType.LIST:
                return tuple(item.strip() for item in text.split(",") if item.strip())
        return text

    def _invalid(self, text: str, problem: str) -> UsageError:
        return UsageError(f"{self.name}: {text!r} {problem}", hint=f"{self.name} is the {self.help}")


# Every template asks these first (it may declare them to change the default or the help):
# the target folder is named after the image.
BUILTIN_VARIABLES = {
    "name": Variable(
        name="name", type=VarType.STR, default="example.com/app",
        help="image name: an AC Identifier that is also a Docker repository, e.g. example.com/hello",
    ),
    "version": Variable(name="version", type=VarType.STR, default="0.1.0", help="image version (Docker tag)"),
}  # fmt: skip


def toml_value(value: object) -> str:
    """Write a value as a TOML literal (the ``toml`` filter): strings quoted and escaped.

    Raises:
        jinja2.TemplateRuntimeError: the value has no TOML form here (None, a table, ...).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.translate(_TOML_ESCAPES) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise jinja2.TemplateRuntimeError(f"the toml filter cannot write {type(value).__name__} values")


def template_error(where: str, message: str, line: int | None = None) -> TemplateError:
    """A mistake in a template, located by file (and line)."""
    location = f"{where}:{line}" if line is not None else where
    return TemplateError(
        f"template {location}: {message}", hint="this is a mistake in the template, or a value it cannot use"
    )


def read_variable(where: str, key: str, spec: object) -> Variable:
    """One ``[variables.NAME]`` table of a ``template.toml``.

    Raises:
        TemplateError: the table breaks a rule (naming the key).
    """
    here = f"variables.{key}"
    if not _VARIABLE_NAME.fullmatch(key) or not isinstance(spec, dict):
        raise template_error(where, f"{here}: a table, named with lowercase letters, digits and '_'")
    if unknown := sorted(spec.keys() - set(VARIABLE_KEYS)):
        raise template_error(where, f"{here}.{unknown[0]}: unknown key (known: {', '.join(VARIABLE_KEYS)})")
    if spec.get("type", "str") not in VarType.__members__.values():
        raise template_error(where, f"{here}.type: {spec['type']!r} is not one of: str, int, bool, list")
    var_type = VarType(spec.get("type", "str"))
    help_text = spec.get("help")
    if not isinstance(help_text, str) or not help_text.strip():
        raise template_error(where, f"{here}.help: every variable needs a help text (it is the prompt)")
    pattern = spec.get("pattern")
    if pattern is not None and not (var_type in (VarType.STR, VarType.LIST) and _is_regex(pattern)):
        raise template_error(where, f"{here}.pattern: must be a regular expression, for a str or list")
    raw_choices = spec.get("choices", [])
    if not isinstance(raw_choices, list) or (raw_choices and var_type in (VarType.BOOL, VarType.LIST)):
        raise template_error(where, f"{here}.choices: must be a list, for a str or int")
    choices = tuple(_typed(where, f"{here}.choices", var_type, choice) for choice in raw_choices)
    default = None
    if "default" in spec:
        default = _typed(where, f"{here}.default", var_type, spec["default"])
    if choices and default is not None and default not in choices:
        raise template_error(where, f"{here}.default: {default!r} is not one of its choices")
    return Variable(
        name=key, type=var_type, help=help_text.strip(), default=default, choices=choices, pattern=pattern
    )


def _is_regex(pattern: object) -> bool:
    try:
        re.compile(str(pattern))
    except re.error:
        return False
    return isinstance(pattern, str)


def _typed(where: str, here: str, var_type: VarType, raw: object) -> Value:
    match var_type, raw:
        case VarType.STR, str():
            return raw
        case VarType.BOOL, bool():
            return raw
        case VarType.INT, int() if not isinstance(raw, bool):
            return raw
        case VarType.LIST, list() if all(isinstance(item, str) for item in raw):
            return tuple(str(item) for item in raw)
    raise template_error(where, f"{here}: {raw!r} is not of type {var_type}")
