"""The two kinds of tests: ``unit/`` runs no process and needs no root; ``integration/`` runs the
real components (buildah, docker, a registry, actool, gpg) and carries the ``integration`` marker.

The folder decides the kind; this file gives every test under ``integration/`` its marker and
refuses a marker that contradicts its folder, and ``unit/conftest.py`` makes any process a unit
test starts fail (unit tests assert argv through the ``fake_run`` seam instead). At the end of
a session, whatever the suite started and left (processes, OCI runtime state, cgroups) fails it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import IN_CI

HERE = Path(__file__).parent

# A property's verdict must not depend on the machine's speed: no per-example deadline, and
# no health check that times the examples (a loaded machine runs them many times slower).
settings.register_profile("dualbuild", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dualbuild")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.relative_to(HERE).parts[0] if item.path.is_relative_to(HERE) else ""
        if kind == "integration":
            item.add_marker(pytest.mark.integration)
        elif kind == "unit":
            if item.get_closest_marker("integration") is not None:
                raise pytest.UsageError(f"{item.nodeid}: marked integration: it belongs in integration/")
        else:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit/ or tests/integration/")


# --- nothing the suite started outlives it ------------------------------------------------------

# Programs the integration tests start, directly or through dualbuild: a process of these that
# was not running when the session began and still runs at its end is a leak.
WATCHED = ("runc", "buildah", "gpg-agent", "dockerd", "containerd", "docker-registry", "skopeo", "conmon")
# Where OCI runtimes keep container state, and the cgroups buildah's containers get.
RUNTIME_STATE = ("/run/runc/*", "/run/crun/*", "/run/dualbuild-runtime-*")
CGROUPS = ("/sys/fs/cgroup/*/buildah-*", "/sys/fs/cgroup/buildah-*")
_BEFORE = pytest.StashKey[dict[str, set[str]]]()


def _watched_processes() -> set[str]:
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]  # e.g. "runc:[2:INIT]" for runc init
        if name.split(":")[0] in WATCHED:
            found.add(f"{stat.split('/')[2]} {name}")
    return found


def _leftovers() -> dict[str, set[str]]:
    return {
        "processes": _watched_processes(),
        "runtime state": {path for pattern in RUNTIME_STATE for path in glob.glob(pattern)},
        "cgroups": {path for pattern in CGROUPS for path in glob.glob(pattern)},
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _leftovers()


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    # While developing, several suites may share one machine: what is new may be another's.
    shared = os.environ.get("DUALBUILD_TESTS_SHARE_MACHINE") == "1" and not IN_CI
    # Agents and daemons stopped at teardown may take a moment to exit, many on a loaded
    # machine: only a leak outlasts this (and then costs it once). Shared, nothing fails on
    # what is found, and another suite's processes would hold every session up.
    deadline = time.monotonic() + (5 if shared else 120)
    while True:
        new = {kind: found - before[kind] for kind, found in _leftovers().items()}
        if not any(new.values()):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for kind, found in new.items():
        for item in sorted(found):
            if reporter is not None:
                reporter.write_line(f"LEFT BEHIND by the tests ({kind}): {item}", red=True)
    if shared:
        return
    _reclaim(new)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _reclaim(new: dict[str, set[str]]) -> None:
    """Stop what the suite left, so that the machine is clean for what runs next."""
    for item in new["processes"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(item.split()[0]), signal.SIGKILL)
    for state in new["runtime state"]:
        runtime = "crun" if "/crun/" in state else "runc"
        if shutil.which(runtime) and not state.startswith("/run/dualbuild-runtime-"):
            subprocess.run([runtime, "delete", "--force", Path(state).name], capture_output=True, check=False)
        shutil.rmtree(state, ignore_errors=True)
    time.sleep(0.5)
    for cgroup in sorted(new["cgroups"], key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)
