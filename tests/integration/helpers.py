"""Helpers of the integration tests: buildah and skopeo against the test store, the CLI as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dualbuild.builder.buildah import StorageOptions
from tests.support import require_tools


def buildah(storage: StorageOptions, *args: str) -> str:
    """Run buildah against the test store; return stdout."""
    return subprocess.run(
        ["buildah", *storage.argv(), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def push_to_registry(archive: Path, reference: str) -> None:
    """Copy a docker-archive into the test registry with skopeo."""
    require_tools("skopeo")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"docker-archive:{archive}",
            f"docker://{reference}",
        ],
        check=True,
    )


def inspect_json(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


# --- the dualbuild command line, as users run it ------------------------------------------------

DUALBUILD = str(Path(sys.executable).parent / "dualbuild")


def dualbuild(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DUALBUILD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


Docker = Callable[..., subprocess.CompletedProcess[str]]
