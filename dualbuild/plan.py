"""Recipe → BuildPlan: stages and steps with args substituted, effective env, output files.

Pure: no file system, no processes. The environment it reads ($SOURCE_DATE_EPOCH) is passed in.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.errors import Problem, RecipeError
from dualbuild.recipe.model import (
    DEFAULT_SOURCE_DATE_EPOCH,
    Base,
    CopyStep,
    Format,
    MkdirStep,
    Recipe,
    RemoveStep,
    RunStep,
    Step,
    SymlinkStep,
    WriteStep,
)
from dualbuild.recipe.rules import ARG_NAME, substitute_args


@dataclass(frozen=True, kw_only=True)
class PlannedStep:
    """A step ready to run: args substituted, its env and workdir resolved."""

    number: int
    step: Step
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None

    @property
    def summary(self) -> str:
        """One line saying what the step does: ``copy payload/ -> /work/``."""
        return describe_step(self.step)


@dataclass(frozen=True, kw_only=True)
class PlannedStage:
    """A stage ready to build."""

    number: int
    name: str
    base: Base
    steps: tuple[PlannedStep, ...]
    workdir: str | None
    env: Mapping[str, str]
    tls_verify: bool
    is_final: bool


@dataclass(frozen=True, kw_only=True)
class Artifacts:
    """The output files of a build."""

    docker: Path | None
    aci: Path | None
    aci_signature: Path | None
    oci: Path | None
    report: Path

    def all(self) -> list[Path]:
        """Every file the build writes."""
        files = (self.docker, self.aci, self.aci_signature, self.oci, self.report)
        return [f for f in files if f is not None]


@dataclass(frozen=True, kw_only=True)
class BuildPlan:
    """Everything a build does, decided before it starts."""

    recipe: Recipe
    context: Path
    out_dir: Path
    args: Mapping[str, str]
    stages: tuple[PlannedStage, ...]
    source_date_epoch: int
    artifacts: Artifacts
    warnings: tuple[str, ...]

    @property
    def final_stage(self) -> PlannedStage:
        """The stage whose tree is the image."""
        return self.stages[-1]


def make_plan(
    recipe: Recipe,
    *,
    build_args: Mapping[str, str] | None = None,
    context: Path | None = None,
    out_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    sign: bool = True,
) -> BuildPlan:
    """Decide every step of a build.

    Raises:
        RecipeError: a --build-arg names no arg of the recipe, or $SOURCE_DATE_EPOCH is invalid.
    """
    args = _effective_args(recipe, build_args or {})
    recipe_dir = recipe.path.parent
    # Absolute, since buildah resolves copy sources against an absolute context directory.
    context = (context if context is not None else recipe_dir).absolute()
    out_dir = (out_dir if out_dir is not None else recipe_dir / recipe.output.dir).absolute()
    stages = tuple(_plan_stage(recipe, index, args) for index in range(len(recipe.stages)))
    return BuildPlan(
        recipe=recipe,
        context=context,
        out_dir=out_dir,
        args=args,
        stages=stages,
        source_date_epoch=_source_date_epoch(recipe, environ or {}),
        artifacts=_artifacts(recipe, out_dir, sign),
        warnings=tuple(lost_fields(recipe)),
    )


def _effective_args(recipe: Recipe, build_args: Mapping[str, str]) -> dict[str, str]:
    problems = []
    for name in build_args:
        if name not in recipe.args:
            defined = ", ".join(recipe.args) or "none"
            hint = f"declare it in [args] of {recipe.path.name} (defined: {defined})"
            if not ARG_NAME.fullmatch(name):
                hint = "arg names are letters, digits and '_'"
            problems.append(
                Problem(file="--build-arg", key=name, message="not an arg of the recipe", hint=hint)
            )
    if problems:
        raise RecipeError(problems)
    return {**recipe.args, **build_args}


def _source_date_epoch(recipe: Recipe, environ: Mapping[str, str]) -> int:
    if recipe.output.source_date_epoch is not None:
        return recipe.output.source_date_epoch
    text = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return DEFAULT_SOURCE_DATE_EPOCH
    if not text.isdigit():
        raise RecipeError(
            [
                Problem(
                    file="$SOURCE_DATE_EPOCH",
                    key="",
                    message=f"{text!r} is not a non-negative integer",
                    hint="unset it, or set output.source_date_epoch in the recipe",
                )
            ]
        )
    return int(text)


def _plan_stage(recipe: Recipe, index: int, args: Mapping[str, str]) -> PlannedStage:
    stage = recipe.stages[index]
    stage_env = {name: _sub(value, args) for name, value in stage.env.items()}
    stage_workdir = _sub(stage.workdir, args) if stage.workdir else None
    steps = []
    for number, step in enumerate(stage.steps, start=1):
        resolved = substitute_step(step, args)
        env: dict[str, str] = {}
        if isinstance(resolved, RunStep):
            env = {**args, **stage_env, **resolved.env}
        steps.append(
            PlannedStep(number=number, step=resolved, env=env, workdir=resolved.workdir or stage_workdir)
        )
    return PlannedStage(
        number=index + 1,
        name=stage.name,
        base=stage.base,
        steps=tuple(steps),
        workdir=stage_workdir,
        env=stage_env,
        tls_verify=stage.tls_verify,
        is_final=index == len(recipe.stages) - 1,
    )


def _sub(text: str, args: Mapping[str, str]) -> str:
    return substitute_args(text, dict(args))


def substitute_step(step: Step, args: Mapping[str, str]) -> Step:
    """The step with ``${NAME}`` replaced in every string it holds."""
    changes: dict[str, object] = {}
    for item in dataclasses.fields(step):
        value = getattr(step, item.name)
        if isinstance(value, enum.Enum):
            continue
        if isinstance(value, str):
            changes[item.name] = _sub(value, args)
        elif isinstance(value, tuple):
            changes[item.name] = tuple(_sub(v, args) if isinstance(v, str) else v for v in value)
        elif isinstance(value, Mapping):
            changes[item.name] = {k: _sub(v, args) for k, v in value.items()}
    return dataclasses.replace(step, **changes)  # type: ignore[arg-type]


def describe_step(step: Step) -> str:
    """One line for logs and plans."""
    match step:
        case RunStep(command=str() as command):
            return f"run {command}"
        case RunStep(command=argv):
            return f"run {shlex.join(argv)}"
        case CopyStep():
            origin = f" (from stage {step.from_stage})" if step.from_stage else ""
            return f"copy {' '.join(step.sources)} -> {step.to}{origin}"
        case WriteStep():
            return f"write {step.path}"
        case MkdirStep():
            return f"mkdir {step.path}"
        case SymlinkStep():
            return f"symlink {step.path} -> {step.target}"
        case RemoveStep():
            return f"remove {' '.join(step.paths)}"


def lost_fields(recipe: Recipe) -> list[str]:
    """Fields of [app] that a requested format cannot carry, one warning each."""
    warnings = []
    formats = recipe.output.formats
    if recipe.app.healthcheck is not None:
        for fmt in (Format.ACI, Format.OCI):
            if fmt in formats:
                warnings.append(f"app.healthcheck: the {fmt} format has no healthcheck; it is left out")
    if recipe.app.stop_signal is not None and Format.ACI in formats:
        warnings.append("app.stop_signal: the aci format has no stop signal; it is left out")
    return warnings


def _artifacts(recipe: Recipe, out_dir: Path, sign: bool) -> Artifacts:
    image = recipe.image
    stem = f"{image.short_name}-{image.version}-{image.os}-{image.arch.file_part}"
    formats = recipe.output.formats
    aci = out_dir / f"{stem}.aci" if Format.ACI in formats else None
    return Artifacts(
        docker=out_dir / f"{stem}.docker.tar" if Format.DOCKER in formats else None,
        aci=aci,
        aci_signature=out_dir / f"{stem}.aci.asc" if aci is not None and sign else None,
        oci=out_dir / f"{stem}.oci.tar" if Format.OCI in formats else None,
        report=out_dir / f"{stem}.report.json",
    )


def plan_to_dict(plan: BuildPlan) -> dict[str, object]:
    """The plan as JSON-ready data, keys in a fixed order."""
    return {
        "recipe": str(plan.recipe.path),
        "image": to_jsonable(plan.recipe.image),
        "context": str(plan.context),
        "out_dir": str(plan.out_dir),
        "args": dict(plan.args),
        "source_date_epoch": plan.source_date_epoch,
        "stages": [
            {
                "number": stage.number,
                "name": stage.name,
                "from": stage.base.describe(),
                "final": stage.is_final,
                "workdir": stage.workdir,
                "env": dict(stage.env),
                "steps": [
                    {
                        "number": step.number,
                        "action": step.step.action,
                        "summary": step.summary,
                        "workdir": step.workdir,
                        "definition": to_jsonable(step.step),
                        **({"env": dict(step.env)} if isinstance(step.step, RunStep) else {}),
                    }
                    for step in stage.steps
                ],
            }
            for stage in plan.stages
        ],
        "app": to_jsonable(plan.recipe.app),
        "artifacts": {k: str(v) if v else None for k, v in _jsonable_fields(plan.artifacts).items()},
        "warnings": list(plan.warnings),
    }


def _jsonable_fields(value: object) -> dict[str, object]:
    assert dataclasses.is_dataclass(value)
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def to_jsonable(value: object) -> object:
    """Dataclasses, enums, paths and containers as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in _jsonable_fields(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
