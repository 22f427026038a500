"""What the project's own files promise agrees with what CI proves."""

from __future__ import annotations

import re
import tomllib

from tests.support import ROOT


def test_ci_tests_the_newest_python_that_requires_python_claims() -> None:
    claimed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    bound = re.fullmatch(r">=3\.11,<3\.(\d+)", claimed)
    assert bound is not None, claimed
    newest = re.search(r"^NEWEST=3\.(\d+)$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert newest is not None
    assert int(newest.group(1)) == int(bound.group(1)) - 1


def test_ci_runs_the_readmes_test_command_with_debians_python() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "debian=/usr/bin/python3" in ci
    assert 'PYTHON="$1" VENV="$2" PYTEST_ADDOPTS="${3:-}" make test' in ci
    # The first run, with Debian's python3, is the whole suite: no pytest options.
    assert 'run_suite "$debian" .venv-debian\n' in ci
    readme = (ROOT / "README.md").read_text().splitlines()
    assert readme[4].startswith("make test")


def test_a_stock_debian_machine_gets_what_the_two_commands_need() -> None:
    script = (ROOT / "scripts" / "install-system-deps").read_text()
    listed = set(re.search(r"packages=\(([^)]*)\)", script, re.DOTALL).group(1).split())  # type: ignore[union-attr]
    # venv (ensurepip) is not in a stock python3; ps is used by the tests; the rest run the suite.
    assert {"python3-venv", "procps", "python3-dev", "gcc", "buildah", "runc", "gnupg", "docker.io"} <= listed
