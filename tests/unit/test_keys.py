"""One keying pass per build: bases resolved once, keys that move exactly when their inputs do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualbuild.builder.cache import Position, StepIndex
from dualbuild.builder.stages import BuildOptions, build_session
from dualbuild.errors import BuildError
from dualbuild.plan import BuildPlan, make_plan
from dualbuild.recipe import load_recipe
from dualbuild.settings import Overrides, resolve
from tests.unit.conftest import FakeRun

RECIPE = """
[image]
name = "example.com/app"
version = "1"

[[stages]]
name = "final"
from = "registry.example/base:1"
  [[stages.steps]]
  copy = ["site/"]
  to = "/srv/"
  [[stages.steps]]
  write = "/etc/motd"
  content = "hi"

[app]
cmd = ["/bin/app"]

[output]
# A layered image keeps the base's own layers, which a faked buildah store does not have.
layers = "squash"
"""


def plan_in(tmp_path: Path, recipe_text: str = RECIPE) -> BuildPlan:
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "index.html").write_text("<p>hello</p>")
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_text)
    recipe = load_recipe(path)
    return make_plan(recipe, resolve(recipe, Overrides(), {"XDG_CACHE_HOME": str(tmp_path / "cache")}))


@pytest.fixture
def buildah(fake_run: FakeRun, mounted: Path) -> FakeRun:
    """buildah as far as a build of RECIPE needs it: a pull, a container, its mount, its config."""
    fake_run.answer("buildah", "pull", stdout="sha256:base\n")
    config = {"OCIv1": {"config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]}}}
    fake_run.answer("buildah", "inspect", "--type", "container", stdout=json.dumps(config))
    fake_run.answer("buildah", "inspect", "--type", "image", returncode=1)
    return fake_run


def test_a_registry_base_is_pulled_once_for_the_up_to_date_check_and_the_build(
    buildah: FakeRun, tmp_path: Path
) -> None:
    plan = plan_in(tmp_path)
    with build_session(plan, BuildOptions()) as session:
        key = session.keyed.final_key
        built = session.build()
    assert built.key == key
    assert built.config.env == (("PATH", "/usr/bin"),)
    assert built.config.cmd == ("/bin/app",)
    assert (built.rootfs / "etc" / "motd").read_text() == "hi"
    pulls = [argv for argv in buildah.of("buildah") if "pull" in argv]
    assert pulls == [["buildah", "pull", "--quiet", "registry.example/base:1"]]
    copies = [argv for argv in buildah.of("buildah") if "copy" in argv]
    assert copies[0][-2:] == [str(tmp_path / "site"), "/srv/"]
    # Every container made is removed when the session ends.
    made = [argv[argv.index("--name") + 1] for argv in buildah.of("buildah") if "from" in argv]
    removed = [argv[-1] for argv in buildah.of("buildah") if argv[1] == "rm"]
    assert sorted(made) == sorted(removed)


def test_keys_move_with_the_inputs_and_only_with_them(buildah: FakeRun, tmp_path: Path) -> None:
    def keys() -> list[str]:
        with build_session(plan_in(tmp_path), BuildOptions(cache=False)) as session:
            return [position.key for position in session.keyed.stages[0].positions]

    first = keys()
    assert keys() == first
    (tmp_path / "site" / "extra.css").write_text("p {}")
    moved = keys()
    assert moved[0] == first[0]  # the base is the same image
    assert moved[1] != first[1]  # the copy reads a new file
    assert moved[2] != first[2]  # and what follows it moves with it
    buildah.answer("buildah", "pull", stdout="sha256:newer-base\n")
    assert keys()[0] != moved[0]


def test_a_missing_copy_source_stops_the_build_before_anything_is_made(
    buildah: FakeRun, tmp_path: Path
) -> None:
    plan = plan_in(tmp_path, RECIPE.replace('copy = ["site/"]', 'copy = ["gone/"]'))
    with (
        pytest.raises(BuildError, match="'gone/' not found in the build context"),
        build_session(plan, BuildOptions()),
    ):
        pass
    assert not [argv for argv in buildah.of("buildah") if "from" in argv]


def test_the_index_says_why_a_step_ran(tmp_path: Path) -> None:
    index = StepIndex(tmp_path, tmp_path / "recipe.toml")
    index.record("final", 1, Position(key="k1", parent="p", definition="d", inputs={"site/a": "file:644:x"}))
    index.save()
    again = StepIndex(tmp_path, tmp_path / "recipe.toml")
    same = Position(key="k2", parent="p", definition="d", inputs={"site/a": "file:644:y"})
    assert again.reason("final", 1, same) == "input changed: site/a"
    assert (
        again.reason("final", 1, Position(key="k", parent="q", definition="d", inputs={}))
        == "the parent changed"
    )
    assert (
        again.reason("final", 1, Position(key="k", parent="p", definition="e", inputs={}))
        == "the step changed"
    )
    assert again.reason("final", 2, same) == "no cache entry"


def test_ignored_files_and_the_output_folder_do_not_move_the_key(buildah: FakeRun, tmp_path: Path) -> None:
    recipe = RECIPE.replace('copy = ["site/"]', 'copy = ["."]')

    def key() -> str:
        with build_session(plan_in(tmp_path, recipe), BuildOptions(cache=False)) as session:
            return session.keyed.stages[0].positions[1].key

    # (The step cache of these tests lives in the context's cache/.)
    (tmp_path / ".dualbuildignore").write_text("*.log\ncache/\n")
    first = key()
    (tmp_path / "build.log").write_text("touched")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "blob").write_text("x")
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "app-1-linux-amd64.aci").write_text("an old artifact")
    assert key() == first
    (tmp_path / "keep.txt").write_text("not ignored")
    assert key() != first


def test_buildah_copies_with_an_ignore_file_of_our_own(buildah: FakeRun, tmp_path: Path) -> None:
    plan = plan_in(tmp_path, RECIPE.replace('copy = ["site/"]', 'copy = ["."]'))
    (tmp_path / ".dockerignore").write_text("*.log\n")
    (tmp_path / "x.log").write_text("")
    with build_session(plan, BuildOptions(cache=False)) as session:
        # The output folder too, though it is not there yet: the build makes it before the copy.
        assert session.keyed.stages[0].sources[1].excluded == ("x.log", "dist")
        session.build()
    [copy] = [argv for argv in buildah.of("buildah") if "copy" in argv]
    # Never buildah's own reading of .dockerignore/.containerignore: ours names what to leave out.
    assert copy[copy.index("--contextdir") + 1] == str(tmp_path)
    assert "--ignorefile" in copy
    assert not Path(copy[copy.index("--ignorefile") + 1]).exists()  # removed after the copy
