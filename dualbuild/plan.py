"""Recipe → BuildPlan: stages and steps with their effective env and workdir, output files.

Pure: no file system, no processes. Settings (context, output folder, source_date_epoch) come
resolved from :mod:`dualbuild.settings`.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.imageconfig import ImageConfig, apply_app, lost_fields
from dualbuild.recipe.model import (
    Base,
    CopyStep,
    Format,
    Image,
    MkdirStep,
    Recipe,
    RemoveStep,
    RunStep,
    Step,
    SymlinkStep,
    WriteStep,
)
from dualbuild.settings import Settings


@dataclass(frozen=True, kw_only=True)
class PlannedStep:
    """A step ready to run: its env and workdir resolved."""

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
class ArtifactFiles:
    """The files of one build: each format's, the ACI's signature, the report.

    Named ``{stem}.docker.tar``, ``.aci``, ``.aci.asc``, ``.oci.tar``, ``.report.json``, where the
    stem is ``{last segment of the name}-{version}-{os}-{arch}``. A build plans them in its
    output directory; ``publish`` finds them next to a report, ``verify`` in the folders it is
    given. A format the build does not write (or a file not found) is None.
    """

    stem: str
    docker: Path | None = None
    aci: Path | None = None
    aci_signature: Path | None = None
    oci: Path | None = None
    report: Path | None = None

    @classmethod
    def named(cls, directory: Path, stem: str, formats: Iterable[Format], *, signed: bool) -> ArtifactFiles:
        """The files a build of these formats writes in ``directory``."""
        kinds = set(formats)
        aci = directory / f"{stem}{SUFFIXES[Format.ACI]}" if Format.ACI in kinds else None
        return cls(
            stem=stem,
            docker=directory / f"{stem}{SUFFIXES[Format.DOCKER]}" if Format.DOCKER in kinds else None,
            aci=aci,
            aci_signature=aci.with_name(aci.name + SIGNATURE_SUFFIX) if aci is not None and signed else None,
            oci=directory / f"{stem}{SUFFIXES[Format.OCI]}" if Format.OCI in kinds else None,
            report=directory / f"{stem}{REPORT_SUFFIX}",
        )

    def by_format(self) -> dict[Format, Path]:
        """The image files, per format, in the order docker, aci, oci."""
        files = {Format.DOCKER: self.docker, Format.ACI: self.aci, Format.OCI: self.oci}
        return {fmt: path for fmt, path in files.items() if path is not None}

    def all(self) -> list[Path]:
        """Every file of the build."""
        files = (self.docker, self.aci, self.aci_signature, self.oci, self.report)
        return [f for f in files if f is not None]


SUFFIXES = {Format.DOCKER: ".docker.tar", Format.ACI: ".aci", Format.OCI: ".oci.tar"}
SIGNATURE_SUFFIX = ".asc"
REPORT_SUFFIX = ".report.json"


def artifact_stem(image: Image) -> str:
    """``{last segment of the name}-{version}-{os}-{arch}``: how a build's files are named."""
    return f"{image.short_name}-{image.version}-{image.os}-{image.arch.file_part}"


@dataclass(frozen=True, kw_only=True)
class BuildPlan:
    """Everything a build does, decided before it starts."""

    recipe: Recipe
    settings: Settings
    args: Mapping[str, str]
    stages: tuple[PlannedStage, ...]
    artifacts: ArtifactFiles
    warnings: tuple[str, ...]

    @property
    def final_stage(self) -> PlannedStage:
        """The stage whose tree is the image."""
        return self.stages[-1]


def make_plan(recipe: Recipe, settings: Settings, *, sign: bool = True) -> BuildPlan:
    """Decide every step of a build (the recipe comes with its build args substituted)."""
    args = dict(recipe.args)
    # Tools that honour it (pip, py_compile, dpkg, gzip) write reproducible files; a recipe's
    # own env or arg of that name still wins.
    run_env = {"SOURCE_DATE_EPOCH": str(settings.source_date_epoch), **args}
    stages = tuple(_plan_stage(recipe, index, run_env) for index in range(len(recipe.stages)))
    recipe_config = apply_app(ImageConfig(), recipe.app, recipe.image.labels)
    return BuildPlan(
        recipe=recipe,
        settings=settings,
        args=args,
        stages=stages,
        artifacts=ArtifactFiles.named(
            settings.out_dir, artifact_stem(recipe.image), recipe.output.formats, signed=sign
        ),
        warnings=tuple(w for fmt in recipe.output.formats for w in lost_fields(recipe_config, fmt)),
    )


def _plan_stage(recipe: Recipe, index: int, run_env: Mapping[str, str]) -> PlannedStage:
    stage = recipe.stages[index]
    steps = []
    for number, step in enumerate(stage.steps, start=1):
        env: dict[str, str] = {}
        if isinstance(step, RunStep):
            # Args reach run steps as environment: a run string's shell expands them (Docker's way).
            env = {**run_env, **stage.env, **step.env}
        steps.append(PlannedStep(number=number, step=step, env=env, workdir=step.workdir or stage.workdir))
    return PlannedStage(
        number=index + 1,
        name=stage.name,
        base=stage.base,
        steps=tuple(steps),
        workdir=stage.workdir,
        env=stage.env,
        tls_verify=stage.tls_verify,
        is_final=index == len(recipe.stages) - 1,
    )


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


def plan_to_dict(plan: BuildPlan) -> dict[str, object]:
    """The plan as JSON-ready data, keys in a fixed order."""
    return {
        "recipe": str(plan.recipe.path),
        "image": to_jsonable(plan.recipe.image),
        "context": str(plan.settings.context),
        "out_dir": str(plan.settings.out_dir),
        "args": dict(plan.args),
        "source_date_epoch": plan.settings.source_date_epoch,
        "layers": str(plan.recipe.output.layers),
        "aci_layers": str(plan.recipe.output.aci_layers),
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
        "artifacts": {
            k: str(v) if v else None for k, v in _jsonable_fields(plan.artifacts).items() if k != "stem"
        },
        "warnings": list(plan.warnings),
    }


def _jsonable_fields(value: object) -> dict[str, object]:
    assert dataclasses.is_dataclass(value)
    # A field left out of equality (where a value was written) is not part of what it is.
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.compare}


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
