"""The build context with real buildah: the ignore file and the output folder; remove patterns."""

from __future__ import annotations

import tarfile
from pathlib import Path

from tests.integration.helpers import dualbuild

RECIPE = """
[image]
name = "example.com/ctx/app"
version = "1.0.0"

[[stages]]
name = "final"
from = "rootfs:busybox.tar"
  [[stages.steps]]
  copy = ["."]
  to = "/src/"
  [[stages.steps]]
  run = "mkdir -p /srv/a/__pycache__ /srv/b/c/__pycache__ && cd /srv && touch x.tmp y.tmp keep a/m.py"
  [[stages.steps]]
  remove = ["/srv/*.tmp", "/srv/**/__pycache__", "/var/log/*.log"]

[app]
cmd = ["/bin/sh"]

[output]
formats = ["aci"]
"""

IGNORE = """# what the image needs from here, and no more
*.log
!keep.log
busybox.tar
"""


def _aci_names(aci: Path, under: str) -> list[str]:
    with tarfile.open(aci, "r:gz") as archive:
        names = [member.name.removeprefix("rootfs") for member in archive.getmembers()]
    return sorted(name for name in names if name.startswith(under))


def _step_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " step " in line and line.startswith("[")]


def test_copying_the_context_honours_the_ignore_file_and_never_takes_the_output(
    project: Path, cli_env: dict[str, str]
) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    (project / ".dualbuildignore").write_text(IGNORE)
    (project / "build.log").write_text("a log of the last build\n")
    (project / "keep.log").write_text("wanted in the image\n")
    (project / "notes").mkdir()
    (project / "notes" / "deep.log").write_text("*.log is for the root only, as in Docker\n")
    dist = project / "dist"
    dist.mkdir()
    (dist / "app-0.9.0-linux-amd64.aci").write_text("an artifact of an older build\n")
    recipe = str(project / "recipe.toml")
    aci = dist / "app-1.0.0-linux-amd64.aci"

    first = dualbuild(["build", recipe], cli_env)
    assert first.returncode == 0, first.stderr
    assert _aci_names(aci, "/src/") == [
        "/src/.dualbuildignore",
        "/src/greeting.txt",
        "/src/keep.log",
        "/src/notes",
        "/src/notes/deep.log",
        "/src/recipe.toml",
    ]
    # remove: patterns expanded in the tree; one that matches nothing is no error.
    assert _aci_names(aci, "/srv/") == ["/srv/a", "/srv/a/m.py", "/srv/b", "/srv/b/c", "/srv/keep"]
    assert "remove /var/log/*.log: nothing matches the pattern" in first.stderr

    # An ignored file changes, the output folder fills up: nothing the image is made of changed.
    (project / "build.log").write_text("a log of this build\n")
    (dist / "unrelated.txt").write_text("something else in the output folder\n")
    again = dualbuild(["build", recipe], cli_env)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr

    aci.unlink()  # the artifact is gone: every step comes from the step cache
    rebuilt = dualbuild(["build", recipe], cli_env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    lines = _step_lines(rebuilt.stderr)
    assert len(lines) == 3
    assert all(line.endswith("[cached]") for line in lines), lines

    (project / "keep.log").write_text("changed, and not ignored\n")
    changed = dualbuild(["build", recipe], cli_env)
    assert changed.returncode == 0, changed.stderr
    assert _step_lines(changed.stderr)[0].endswith("[run: input changed: keep.log]")


def test_a_copy_source_the_ignore_file_excludes_is_an_error(project: Path, cli_env: dict[str, str]) -> None:
    (project / "recipe.toml").write_text(RECIPE.replace('copy = ["."]', 'copy = ["build.log"]'))
    (project / ".dualbuildignore").write_text(IGNORE)
    (project / "build.log").write_text("x\n")
    result = dualbuild(["build", str(project / "recipe.toml")], cli_env)
    assert result.returncode == 1, result.stderr
    assert "'build.log' is excluded from the build context" in result.stderr
    assert ".dualbuildignore excludes it (line 2: *.log)" in result.stderr
