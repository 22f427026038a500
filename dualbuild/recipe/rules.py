"""The naming and value rules of the formats a recipe feeds (appc, Docker), in one place."""

from __future__ import annotations

import posixpath
import re

from dualbuild.recipe.positions import KeyPath
from dualbuild.recipe.reader import Reader

# appc spec/types.md; actool is laxer (accepts doubled separators) but the spec regex is what
# every consumer agrees on.
AC_IDENTIFIER = re.compile(r"[a-z0-9]+([-._~/][a-z0-9]+)*")
AC_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
# appc v0.8.11 app.environment names (appc/spec#691).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9.-]*")
# The same before v0.8.11 (schema/types/environment.go up to v0.8.10): what readers vendoring an
# older spec (docker2aci v0.17.2) still enforce, refusing the whole manifest otherwise.
ENV_NAME_BEFORE_0_8_11 = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
# distribution/reference: tag grammar.
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOCKER_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*"
REGISTRY_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH}(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?", re.ASCII
)
ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
OWNER = re.compile(r"(\d+):(\d+)")
MODE = re.compile(r"0?[0-7]{3,4}")
HTTP_URL = re.compile(r"https?://[^\s/$.?#][^\s]*", re.IGNORECASE)
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
# `${NAME}` refers to a build arg; `$${` stands for a literal `${` (so shell code keeps its own).
ARG_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def is_docker_repository(name: str) -> bool:
    """True when ``name`` is a Docker repository (path components, at most 255 characters)."""
    return len(name) <= 255 and all(_DOCKER_COMPONENT.fullmatch(c) for c in name.split("/"))


def parse_duration_ns(text: str) -> int | None:
    """Parse a Go-style duration (``1m30s``, ``500ms``) into nanoseconds; None if invalid."""
    position, total = 0, 0.0
    if not text:
        return None
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_NS[match.group(2)]
        position = match.end()
    return int(total) if position == len(text) and total > 0 else None


def parse_age_seconds(text: str) -> int | None:
    """Parse an age such as ``7d``, ``12h``, ``1w2d`` or ``90m`` into seconds; None if invalid."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    parts = re.findall(r"(\d+)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(number) * units[unit] for number, unit in parts)


def check_context_path(reader: Reader, path_text: str, path: KeyPath) -> bool:
    """A path in the build context: relative, and not escaping it with ``..``."""
    if not path_text:
        reader.error(path, "the path is empty")
        return False
    if path_text.startswith("/"):
        reader.error(path, f"{path_text!r} is absolute", "paths in the build context are relative to it")
        return False
    normal = posixpath.normpath(path_text)
    if normal == ".." or normal.startswith("../"):
        reader.error(
            path,
            f"{path_text!r} leaves the build context",
            "only files inside the context can be used; pass --context to widen it",
        )
        return False
    return True
