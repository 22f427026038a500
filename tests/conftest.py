"""Shared fixtures: tool requirements that skip locally but fail under CI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(condition: bool, reason: str) -> None:
    """Skip a test whose requirement is missing; under CI a missing requirement is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    """Require external programs on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    require(not missing, f"missing tools: {', '.join(missing)} (run `make setup` as root)")


def require_root() -> None:
    """Require running as root (buildah, docker and device nodes need it here)."""
    require(os.geteuid() == 0, "needs root")
