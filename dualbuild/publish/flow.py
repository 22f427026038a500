"""`dualbuild publish`: the last build's artifacts → a Docker registry and an appc discovery site.

Everything is checked before anything is written: the report belongs to the recipe as it is
now, the files are the ones the report describes, the published public key verifies the ACI's
signature, and nothing already published under this version would be replaced (unless
``force``). Then the image is pushed (publish/docker.py) and the ACI site written, files first
and the discovery page last (publish/aci.py). What was published is added to the report.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from dualbuild import run, settings
from dualbuild.emit.artifact import Artifact
from dualbuild.errors import PublishError, ReportError, UsageError
from dualbuild.files import file_sha256, remember_digests
from dualbuild.plan import ArtifactFiles, artifact_stem
from dualbuild.publish import aci as publish_aci
from dualbuild.publish import docker as publish_docker
from dualbuild.publish.types import (
    AciWritten,
    Build,
    DockerPushed,
    PublishRequest,
    PublishResult,
    SidePublishError,
)
from dualbuild.recipe import load_recipe
from dualbuild.recipe.model import Format, Recipe
from dualbuild.report import Published, read_report, write_report


def publish(request: PublishRequest) -> PublishResult:
    """Publish the artifacts of the recipe's last build.

    Raises:
        UsageError: nothing to publish to, or an option is invalid (exit 2).
        PublishError: no build, a stale build, no usable public key, a signature that does
            not verify, a refused overwrite, or a failed push or upload; the message says
            what was and was not published (exit 5).
        ToolNotFoundError: skopeo or gpg is missing (exit 3).
        Interrupted: SIGINT/SIGTERM, after the ACI site was rolled back (exit 130/143).
    """
    recipe = load_recipe(request.recipe)
    targets = settings.publish_targets(
        recipe, docker=request.docker, aci=request.aci, aci_url=request.aci_url
    )
    if not targets.docker and not targets.aci:
        raise UsageError(
            "nothing to publish to",
            hint="set docker and/or aci in [publish] of the recipe, or pass --docker / --aci",
        )
    build = load_build(recipe, request)
    report_path = build.files.report
    assert report_path is not None
    docker_done: DockerPushed | None = None
    aci_done: AciWritten | None = None
    try:
        with run.interrupts_as_errors():
            # Both sides check everything (and refuse) before either writes anything.
            docker_plan = publish_docker.prepare(build, targets.docker, request) if targets.docker else None
            aci_context = (
                publish_aci.prepare(build, targets.aci, targets.aci_url, request)
                if targets.aci
                else contextlib.nullcontext()
            )
            with aci_context as aci_plan:
                if request.dry_run:
                    actions = [
                        *(docker_plan.actions() if docker_plan else []),
                        *(aci_plan.actions() if aci_plan else []),
                    ]
                    return PublishResult(report=report_path, dry_run=True, actions=tuple(actions))
                if docker_plan is not None:
                    docker_done = publish_docker.push(docker_plan)
                if aci_plan is not None:
                    aci_done = publish_aci.apply(aci_plan)
    except PublishError as error:
        raise _summary(error, docker_done, targets.docker, targets.aci) from error
    finally:
        # Whatever did get out is on record, even when the other side failed.
        _record(build, docker_done, aci_done)
    return PublishResult(report=report_path, dry_run=False, docker=docker_done, aci=aci_done)


def _summary(
    error: PublishError, docker: DockerPushed | None, docker_repo: str | None, aci_dest: str | None
) -> PublishError:
    """The error, followed by what was and was not published."""
    side = error.side if isinstance(error, SidePublishError) else None
    published = list(error.published) if isinstance(error, SidePublishError) else []
    not_published = list(error.not_published) if isinstance(error, SidePublishError) else []
    if docker is not None:
        published.insert(0, f"Docker image {docker.record.reference} as {', '.join(docker.record.tags)}")
    elif docker_repo and side != "docker":
        not_published.insert(0, f"the Docker image ({docker_repo}; not pushed)")
    if aci_dest and side != "aci":
        not_published.append(f"the ACI ({aci_dest}; not written)")
    lines = [error.message, "published: " + ("; ".join(published) if published else "nothing")]
    if not_published:
        lines.append("not published: " + "; ".join(not_published))
    return PublishError(
        "\n".join(lines),
        hint=error.hint or "fix the cause and run `dualbuild publish` again; what is already out is skipped",
    )


def load_build(recipe: Recipe, request: PublishRequest) -> Build:
    """Find the last build of the recipe through its report, and check it is still current.

    The files are found next to the report (the output dir may have been moved or
    downloaded). Their digests are checked against the report's, through the stamps the
    report recorded: a file the build wrote and nobody touched is not read again.

    Raises:
        PublishError: no report; the recipe changed since the build; an artifact is missing
            or differs from what the report recorded.
    """
    out_dir = settings.resolve(recipe, settings.Overrides(out_dir=request.out_dir), request.environ).out_dir
    named = ArtifactFiles.named(out_dir, artifact_stem(recipe.image), (), signed=False)
    assert named.report is not None
    report_path = named.report
    try:
        report = read_report(report_path)
    except FileNotFoundError:
        raise PublishError(
            f"no build of {request.recipe} found: {report_path} does not exist",
            hint=f"run `dualbuild build {request.recipe}` first (or pass --out to its output dir)",
        ) from None
    except ReportError as error:
        raise PublishError(error.message) from None
    remember_digests(report.digests)
    if report.recipe_sha256 != file_sha256(recipe.path):
        raise PublishError(
            f"{recipe.path} changed since the build that wrote {report_path.name}",
            hint=f"rebuild first: dualbuild build {request.recipe}",
        )
    signature = report.signature
    files = ArtifactFiles(
        stem=named.stem,
        docker=_artifact(report_path, report.artifact(Format.DOCKER)),
        aci=_artifact(report_path, report.artifact(Format.ACI)),
        aci_signature=report_path.parent / signature.file.name if signature is not None else None,
        report=report_path,
    )
    return Build(recipe=recipe, report=report, files=files)


def _artifact(report_path: Path, artifact: Artifact | None) -> Path | None:
    if artifact is None:
        return None
    path = report_path.parent / artifact.path.name
    if not path.is_file():
        raise PublishError(f"{path} is missing; the report lists it", hint="rebuild first")
    if artifact.sha256 != file_sha256(path):
        raise PublishError(
            f"{path} is not the file the build wrote (its sha256 differs from the report)",
            hint="rebuild first; never edit artifacts after a build",
        )
    return path


def _record(build: Build, docker: DockerPushed | None, aci: AciWritten | None) -> None:
    """Add what was published to the report, keeping what an earlier publish recorded."""
    if docker is None and aci is None:
        return
    earlier = build.report.published
    published = Published(
        docker=docker.record if docker is not None else earlier.docker,
        aci=aci.record if aci is not None else earlier.aci,
    )
    assert build.files.report is not None
    write_report(build.files.report, replace(build.report, published=published))
