"""Build args reach every string of a recipe, and the result is validated again; [app].env expands."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualbuild.errors import RecipeError
from dualbuild.imageconfig import DEFAULT_PATH, ImageConfig, apply_app, expand_env
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.model import CopyStep, RegistryBase, RunStep, WriteStep

RECIPE = """
[image]
name = "example.com/${NAME}"
version = "${VERSION}"
labels = { "org.example.flavour" = "${FLAVOUR}" }
annotations = { homepage = "https://example.com/${NAME}" }

[args]
NAME = "web"
VERSION = "1.0"
FLAVOUR = "plain"
BASE = "registry.example/debian:12"
SRC = "site"
TARGET = "/etc/motd"
V = "x"

[[stages]]
from = "${BASE}"

  [[stages.steps]]
  copy = ["${SRC}/"]
  to = "/srv/${NAME}/"

  [[stages.steps]]
  write = "${TARGET}"
  content = "${FLAVOUR}\\n"

  [[stages.steps]]
  run = "echo \\"$V\\" ${V} $${HOME} > /out"

[app]
workdir = "/srv/${NAME}"
env = { APP = "${NAME}", PATH = "/opt/${NAME}/bin:$PATH", HOME_DIR = "${HOME}" }
"""


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def test_args_are_substituted_in_the_base_labels_annotations_app_and_steps(recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path, {"FLAVOUR": "spicy", "VERSION": "2.0"})
    assert (recipe.image.name, recipe.image.version) == ("example.com/web", "2.0")
    assert recipe.image.labels == {"org.example.flavour": "spicy"}
    assert recipe.image.annotations["homepage"] == "https://example.com/web"
    stage = recipe.final_stage
    assert isinstance(stage.base, RegistryBase)
    assert stage.base.reference == "registry.example/debian:12"
    copy, write, run = stage.steps
    assert isinstance(copy, CopyStep)
    assert (copy.sources, copy.to) == (("site/",), "/srv/web/")
    assert isinstance(write, WriteStep)
    assert (write.path, write.content) == ("/etc/motd", "spicy\n")
    # The shell expands args from the step's environment; $${ is still a literal ${.
    assert isinstance(run, RunStep)
    assert run.command == 'echo "$V" ${V} ${HOME} > /out'
    assert recipe.app.workdir == "/srv/web"
    # An [app].env name that is no arg is the environment's, expanded with the config.
    assert recipe.app.env == {"APP": "web", "PATH": "/opt/web/bin:$PATH", "HOME_DIR": "${HOME}"}


def test_a_build_arg_value_is_data_in_a_run_string(recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path, {"V": "$(id -u)"})
    run = recipe.final_stage.steps[2]
    assert isinstance(run, RunStep)
    assert "id -u" not in run.command
    assert recipe.args["V"] == "$(id -u)"


@pytest.mark.parametrize(
    ("build_args", "key", "message"),
    [
        ({"TARGET": "/etc/x\nevil"}, "stages[0].steps[1].write", "NUL or newline"),
        ({"SRC": "/etc/shadow"}, "stages[0].steps[0].copy[0]", "is absolute"),
        ({"SRC": "../../etc"}, "stages[0].steps[0].copy[0]", "leaves the build context"),
        ({"BASE": "not a reference!"}, "stages[0].from", ""),
        ({"VERSION": "1.0 beta"}, "image.version", ""),
        ({"TARGET": "relative/../x"}, "", ""),
    ],
)
def test_the_substituted_recipe_is_validated_again(
    recipe_path: Path, build_args: dict[str, str], key: str, message: str
) -> None:
    if not key:  # a relative write path is fine: relative to the workdir
        load_recipe(recipe_path, build_args)
        return
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_path, build_args)
    problem = caught.value.problems[0]
    assert problem.key == key
    assert message in problem.message
    assert "after substituting build args" in problem.message
    assert problem.line is not None
    assert problem.file == str(recipe_path)


def test_an_undeclared_arg_is_refused_wherever_it_is_used(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\nlabels = { a = "${NOPE}" }\n'
        '[[stages]]\nfrom = "${MISSING}"\n[app]\nuser = "${WHO}"\n'
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    keys = {problem.key for problem in caught.value.problems}
    assert keys == {"image.labels.a", "stages[0].from", "app.user"}
    assert all("does not name a build arg" in problem.message for problem in caught.value.problems)


def test_a_build_arg_the_recipe_does_not_declare_is_refused(recipe_path: Path) -> None:
    with pytest.raises(RecipeError, match="not an arg of the recipe") as caught:
        load_recipe(recipe_path, {"NOPE": "1"})
    assert caught.value.problems[0].file == "--build-arg"


def test_app_env_expands_like_dockerfile_env(recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path)
    base = ImageConfig(env=(("PATH", "/usr/bin:/bin"), ("HOME", "/root")))
    env = dict(apply_app(base, recipe.app, {}).env)
    assert env["PATH"] == "/opt/web/bin:/usr/bin:/bin"
    assert env["HOME_DIR"] == "/root"
    # A base without PATH (scratch, a rootfs): the runtimes' default PATH, as BuildKit does.
    assert dict(apply_app(ImageConfig(), recipe.app, {}).env)["PATH"] == f"/opt/web/bin:{DEFAULT_PATH}"


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("$A:${A}", "1:1"),
        ("\\$A", "$A"),
        ("${UNSET}x", "x"),
        ("${UNSET:-fallback}", "fallback"),
        ("${A:-fallback}", "1"),
        ("${A:+set}${UNSET:+set}", "set"),
        ("100$", "100$"),
    ],
)
def test_env_expansion_cases(value: str, expanded: str) -> None:
    assert expand_env(value, {"A": "1"}) == expanded
