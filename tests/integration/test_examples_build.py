"""The example recipes that need no internet registry are built for real, signed, and verified."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import dualbuild
from tests.support import ROOT, require_tools

# Examples whose bases are local files or a Debian bootstrap (Debian's mirror is reachable);
# the others start from Docker Hub images, which no test machine here can pull.
OFFLINE = ["hello", "scratch-static", pytest.param("debian-service", marks=pytest.mark.slow)]


@pytest.mark.parametrize("example", OFFLINE)
def test_offline_example_builds_and_verifies(example: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    require_tools("actool")
    if example == "debian-service":
        require_tools("mmdebstrap")
    context = tmp_path / example
    shutil.copytree(ROOT / "recipes" / example, context, ignore=shutil.ignore_patterns("dist", "*.tar"))
    if example == "hello":
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "busybox_rootfs.py"),
                str(context / "busybox-rootfs.tar"),
            ],
            check=True,
        )
    result = dualbuild(["build", str(context / "recipe.toml"), "--json"], cli_env, timeout=900)
    assert result.returncode == 0, result.stderr
    dist = context / "dist"
    acis = list(dist.glob("*.aci"))
    assert len(acis) == 1
    subprocess.run(["actool", "validate", str(acis[0])], check=True)
    verified = dualbuild(["verify", str(dist)], cli_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
