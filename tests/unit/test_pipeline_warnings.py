"""What a build's tree walk leaves out reaches the log as well as the report, once."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from dualbuild.builder.stages import BuildOptions
from dualbuild.pipeline import BuildRequest, build
from tests.unit.conftest import FakeRun

RECIPE = """
[image]
name = "example.com/app"
version = "1"

[[stages]]
name = "final"
from = "registry.example/base:1"
  [[stages.steps]]
  write = "/etc/motd"
  content = "hi"

[output]
formats = ["docker"]
# A layered image keeps the base's own layers, which a faked buildah store does not have.
layers = "squash"
"""


def test_a_skipped_socket_is_a_warning_in_the_log_and_the_report(
    fake_run: FakeRun, tmp_path: Path, mounted: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A daemon a run step started left its socket in the tree.
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(os.fspath(mounted / "control.sock"))
    fake_run.answer("buildah", "pull", stdout="sha256:base\n")
    fake_run.answer("buildah", "inspect", "--type", "container", stdout=json.dumps({"OCIv1": {"config": {}}}))
    (tmp_path / "recipe.toml").write_text(RECIPE)
    request = BuildRequest(
        recipe=tmp_path / "recipe.toml", sign=False, options=BuildOptions(cache=False),
        environ={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dualbuild"):
        report = build(request)
    message = "skipped socket /control.sock: sockets cannot be stored in an image"
    assert message in report.warnings
    assert [record.getMessage() for record in caplog.records].count(message) == 1
