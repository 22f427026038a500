from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dualbuild.cli.main import cli
from dualbuild.errors import RecipeError
from dualbuild.plan import BuildPlan, make_plan
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.model import CopyStep, RunStep, WriteStep
from dualbuild.settings import Overrides, resolve

RECIPE = """
[image]
name = "example.com/team/web"
version = "2.1.0"
tags = ["latest", "2"]
arch = "arm/v7"

[args]
GREETING = "hello"
PREFIX = "/opt/web"

[[stages]]
name = "build"
from = "scratch"
env = { STAGE_VAR = "${GREETING}-stage" }
workdir = "${PREFIX}"

  [[stages.steps]]
  run = "echo ${GREETING} $${HOME}"
  env = { STEP_VAR = "x" }

  [[stages.steps]]
  run = ["printf", "%s", "${PREFIX}/bin"]
  workdir = "/tmp"

[[stages]]
name = "final"
from = "stage:build"

  [[stages.steps]]
  copy = ["${PREFIX}/bin/"]
  from = "build"
  to = "/usr/local/bin/"

  [[stages.steps]]
  write = "/etc/greeting"
  content = "${GREETING}\\n"

[app]
healthcheck = { cmd = ["true"] }
stop_signal = "SIGQUIT"

[output]
formats = ["docker", "aci", "oci"]
"""


def planned(
    path: Path, *, out_dir: Path | None = None, build_args: dict[str, str] | None = None, sign: bool = True
) -> BuildPlan:
    recipe = load_recipe(path, build_args)
    return make_plan(recipe, resolve(recipe, Overrides(out_dir=out_dir), {}), sign=sign)


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def test_args_are_substituted_and_escapes_kept(recipe_path: Path) -> None:
    plan = planned(recipe_path, build_args={"GREETING": "hi"})
    build, final = plan.stages
    first = build.steps[0].step
    assert isinstance(first, RunStep)
    # A run string's shell expands the arg from the step's environment: it is never pasted in.
    assert first.command == "echo ${GREETING} ${HOME}"
    assert build.steps[0].env["GREETING"] == "hi"
    second = build.steps[1].step
    assert isinstance(second, RunStep)
    assert second.command == ("printf", "%s", "/opt/web/bin")
    copy = final.steps[0].step
    assert isinstance(copy, CopyStep)
    assert copy.sources == ("/opt/web/bin/",)
    write = final.steps[1].step
    assert isinstance(write, WriteStep)
    assert write.content == "hi\n"


def test_run_env_is_args_then_stage_then_step(recipe_path: Path) -> None:
    plan = planned(recipe_path)
    step = plan.stages[0].steps[0]
    assert step.env == {
        "SOURCE_DATE_EPOCH": "0",
        "GREETING": "hello",
        "PREFIX": "/opt/web",
        "STAGE_VAR": "hello-stage",
        "STEP_VAR": "x",
    }
    assert step.workdir == "/opt/web"
    assert plan.stages[0].steps[1].workdir == "/tmp"
    assert plan.final_stage.is_final
    assert not plan.stages[0].is_final


def test_unknown_build_arg_is_refused(recipe_path: Path) -> None:
    with pytest.raises(RecipeError, match="not an arg of the recipe") as caught:
        planned(recipe_path, build_args={"NOPE": "1"})
    assert caught.value.problems[0].key == "NOPE"


def test_artifact_names_and_lost_field_warnings(recipe_path: Path, tmp_path: Path) -> None:
    plan = planned(recipe_path, out_dir=tmp_path / "out")
    names = [path.name for path in plan.artifacts.all()]
    assert names == [
        "web-2.1.0-linux-armv7.docker.tar",
        "web-2.1.0-linux-armv7.aci",
        "web-2.1.0-linux-armv7.aci.asc",
        "web-2.1.0-linux-armv7.oci.tar",
        "web-2.1.0-linux-armv7.report.json",
    ]
    assert any("healthcheck" in w and "aci" in w for w in plan.warnings)
    assert any("healthcheck" in w and "oci" in w for w in plan.warnings)
    assert any("stop_signal" in w and "aci" in w for w in plan.warnings)
    assert not planned(recipe_path, sign=False).artifacts.aci_signature


def test_plan_json_on_stdout(recipe_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plan", str(recipe_path), "--json", "--build-arg", "GREETING=yo"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["image"]["arch"] == "arm/v7"
    assert data["args"]["GREETING"] == "yo"
    assert data["stages"][0]["steps"][0]["summary"] == "run echo ${GREETING} ${HOME}"
    assert data["stages"][1]["from"] == "stage:build"
    assert data["stages"][1]["final"] is True
    assert data["containers"] == "stage build step 1 is run echo ${GREETING} ${HOME}"


def test_plan_text_and_bad_build_arg(recipe_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plan", str(recipe_path)])
    assert result.exit_code == 0
    assert "[2/2 final] (final) from stage:build" in result.stdout
    assert "step 1/2 copy /opt/web/bin/ -> /usr/local/bin/ (from stage build)" in result.stdout
    assert "stages: in buildah containers (stage build step 1 is run echo" in result.stdout
    bad = CliRunner().invoke(cli, ["plan", str(recipe_path), "--build-arg", "NOEQUALS"])
    assert bad.exit_code == 2
    assert "is not KEY=VALUE" in bad.stderr
    unknown = CliRunner().invoke(cli, ["plan", str(recipe_path), "--build-arg", "X=1"])
    assert unknown.exit_code == 2
    assert "error: --build-arg: X: not an arg of the recipe" in unknown.stderr
