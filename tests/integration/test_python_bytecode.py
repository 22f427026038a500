"""A Debian image's bytecode is used as it is at run time, not compiled again (issue 16)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import Docker, dualbuild
from tests.support import require_tools

RECIPE = """\
[image]
name = "dualbuild-test/python"
version = "1.0.0"

[[stages]]
from = { bootstrap = "debian", suite = "bookworm", variant = "minbase", packages = ["python3"] }

  # What pip or a compileall leaves when it does not honour SOURCE_DATE_EPOCH: timestamp pycs.
  [[stages.steps]]
  run = "mkdir -p /opt/app && echo 'ANSWER = 42' > /opt/app/mod.py"

  [[stages.steps]]
  run = ["python3", "-m", "compileall", "-q", "--invalidation-mode", "timestamp", "/opt/app"]

  # A package installed in a run step, over the default (private) network: its postinst
  # compiles it with SOURCE_DATE_EPOCH set, so its bytecode is hash-based.
  [[stages.steps]]
  run = "apt-get update -q && apt-get install -y -q --no-install-recommends python3-six"

[output]
formats = ["docker"]
"""
IMPORTS = "import sys; sys.path.insert(0, '/opt/app'); import json, mod, six; print(mod.ANSWER)"
JSON_PYC = "usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"


@pytest.mark.slow
def test_debian_python_imports_its_bytecode_without_recompiling(
    tmp_path: Path, cli_env: dict[str, str], docker: Docker
) -> None:
    require_tools("mmdebstrap")
    (tmp_path / "recipe.toml").write_text(RECIPE)
    built = dualbuild(["build", str(tmp_path / "recipe.toml"), "--json"], cli_env, timeout=900)
    assert built.returncode == 0, built.stderr
    docker("load", "-i", str(next((tmp_path / "dist").glob("*.docker.tar"))))
    image = "dualbuild-test/python:1.0.0"
    ran = docker("run", "--rm", "--network", "none", image, "python3", "-v", "-c", IMPORTS)
    assert ran.stdout == "42\n"
    assert "bytecode is stale" not in ran.stderr
    assert f"code object from '/{JSON_PYC}'" in ran.stderr
    assert "code object from '/opt/app/__pycache__/mod.cpython-311.pyc'" in ran.stderr
    assert "code object from '/usr/lib/python3/dist-packages/__pycache__/six.cpython-311.pyc'" in ran.stderr
    # The base's pyc recorded the package's mtime, which the default epoch (0) clamps away:
    # without its header rewritten it was stale in the image.
    base = next(Path(cli_env["XDG_CACHE_HOME"]).glob("dualbuild/bootstrap/bookworm-minbase-*.tar"))
    with tarfile.open(base) as archive:
        header = archive.extractfile(f"./{JSON_PYC}").read(16)  # type: ignore[union-attr]
    assert header[4:8] == bytes(4)  # timestamp-based: Debian's py3compile ran without SOURCE_DATE_EPOCH
    assert int.from_bytes(header[8:12], "little") > 0
    report = json.loads(built.stdout)
    assert report["source_date_epoch"] == 0
