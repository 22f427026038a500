"""SIGKILL at random points of real builds (the OOM killer, a CI hard kill): the next build is
correct and reclaims everything the killed one left, and only that."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dualbuild.builder.storage import StorageOptions
from tests.integration.helpers import DUALBUILD, buildah, dualbuild
from tests.integration.test_build_cli import RECIPE

STEM = "hello-2.0.0-linux-amd64"


def _left_by(pid: int, storage: StorageOptions, out: Path) -> list[str]:
    """Everything on the machine that names the dead build's PID as its owner."""
    found = [
        f"container {c}" for c in buildah(storage, "containers", "--format", "{{.ContainerName}}").split()
    ]
    found = [item for item in found if f"dualbuild-{pid}-" in item]
    patterns = [
        f"/tmp/dualbuild-*-{pid}-*",
        f"/var/tmp/dualbuild-*-{pid}-*",
        f"/run/dualbuild-runtime-{pid}-*",
        f"/run/netns/dualbuild-{pid}-*",
        f"{out}/.dualbuild-{pid}",
        f"{out}/.tmp-{pid}-*",
    ]
    found += [f"path {path}" for pattern in patterns for path in glob.glob(pattern)]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"dualbuild-{pid}-".encode() in arg for arg in argv):
            found.append(f"process {cmdline.parent.name}: {b' '.join(argv)[:120]!r}")
    return found


@pytest.mark.slow
def test_sigkill_at_random_points_is_reclaimed_by_the_next_build(
    project: Path, cli_env: dict[str, str], buildah_storage: StorageOptions
) -> None:
    recipe = project / "recipe.toml"
    recipe.write_text(RECIPE)
    out = project / "dist"
    chooser = random.Random(int(os.environ.get("DUALBUILD_SIGKILL_SEED", "20261201")))
    rounds = int(os.environ.get("DUALBUILD_SIGKILL_ROUNDS", "20"))
    # Kills land within the time one build takes on this machine, measured first.
    start = time.monotonic()
    reference = dualbuild(["build", str(recipe), "--no-cache", "--out", str(out)], cli_env)
    assert reference.returncode == 0, reference.stderr
    duration = time.monotonic() - start
    expected = json.loads((out / f"{STEM}.report.json").read_text())["artifacts"]
    for _ in range(rounds):
        process = subprocess.Popen(
            [DUALBUILD, "build", str(recipe), "--no-cache", "--out", str(out)],
            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        process.stderr.readline()  # the build has begun
        time.sleep(chooser.uniform(0.0, duration))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        after = dualbuild(["build", str(recipe), "--out", str(out)], cli_env)
        assert after.returncode == 0, after.stderr
        assert "Traceback" not in after.stderr
        assert _left_by(process.pid, buildah_storage, out) == []
        report = json.loads((out / f"{STEM}.report.json").read_text())
        assert {fmt: entry["sha256"] for fmt, entry in report["artifacts"].items()} == {
            fmt: entry["sha256"] for fmt, entry in expected.items()
        }
        verified = dualbuild(["verify", str(out)], cli_env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
