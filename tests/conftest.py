"""The two kinds of tests: ``unit/`` runs no process and needs no root; ``integration/`` runs the
real components (buildah, docker, a registry, actool, gpg) and carries the ``integration`` marker.

The folder decides the kind; this file gives every test under ``integration/`` its marker and
refuses a marker that contradicts its folder, and ``unit/conftest.py`` makes any process a unit
test starts fail (unit tests assert argv through the ``fake_run`` seam instead).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


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
