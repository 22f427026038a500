"""The commands that read recipes and make or check artifacts: validate, plan, build, convert, verify."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from dualbuild import settings
from dualbuild.builder.held import why_extracted
from dualbuild.builder.stages import BuildOptions
from dualbuild.cli.options import (
    build_request,
    json_option,
    keyring_option,
    parse_build_args,
    recipe_argument,
    recipe_options,
    registry_options,
    secret_option,
    sign_options,
)
from dualbuild.convert import ConvertRequest, convert
from dualbuild.errors import Problem, RecipeError, UsageError, VerifyError
from dualbuild.pipeline import BuildRequest, check_reproducible
from dualbuild.pipeline import build as run_build
from dualbuild.plan import BuildPlan, make_plan, plan_to_dict
from dualbuild.recipe import load_recipe
from dualbuild.recipe.model import Format, RunStep
from dualbuild.recipe.schema import RECIPE_SCHEMA
from dualbuild.report import Report, report_json
from dualbuild.verify.sets import find_sets, verify_set


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(recipes: tuple[Path, ...]) -> None:
    """Check recipes without building; report every problem of each file (exit 2 if any)."""
    problems: list[Problem] = []
    for path in recipes:
        try:
            load_recipe(path)
        except RecipeError as error:
            problems.extend(error.problems)
            continue
        click.echo(f"ok: {path}")
    if problems:
        raise RecipeError(problems)


@click.command()
@recipe_argument
@recipe_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan(
    recipe: Path, build_args: tuple[str, ...], context: Path | None, out: Path | None, as_json: bool
) -> None:
    """Show what a build would do: stages, steps with args substituted, output files."""
    loaded = load_recipe(recipe, parse_build_args(build_args))
    resolved = settings.resolve(loaded, settings.Overrides(context=context, out_dir=out), os.environ)
    planned = make_plan(loaded, resolved)
    if as_json:
        shown = plan_to_dict(planned)
        # Why the stages need containers; null: they are built in memory.
        shown["containers"] = why_extracted(planned, BuildOptions())
        click.echo(json.dumps(shown, indent=2))
        return
    click.echo(plan_text(planned))


def plan_text(planned: BuildPlan) -> str:
    """The plan as a person reads it."""
    image = planned.recipe.image
    lines = [f"image {image.name}:{image.version} ({image.os}/{image.arch})"]
    if image.tags:
        lines.append(f"  tags: {', '.join(image.tags)}")
    for stage in planned.stages:
        final = " (final)" if stage.is_final else ""
        lines.append(
            f"[{stage.number}/{len(planned.stages)} {stage.name}]{final} from {stage.base.describe()}"
        )
        for step in stage.steps:
            lines.append(f"  step {step.number}/{len(stage.steps)} {step.summary}")
            if isinstance(step.step, RunStep) and (step.step.secrets or step.step.cache):
                mounted = [f"secret {secret.id} at {secret.path}" for secret in step.step.secrets]
                mounted += [
                    f"cache {mount.id or mount.target} at {mount.target}" for mount in step.step.cache
                ]
                lines.append(f"    mounts: {', '.join(mounted)}")
    reason = why_extracted(planned, BuildOptions())
    lines.append(
        "stages: in memory, the base never extracted (no step needs a container)"
        if reason is None
        else f"stages: in buildah containers ({reason})"
    )
    lines.append(f"source_date_epoch: {planned.settings.source_date_epoch}")
    output = planned.recipe.output
    lines.append(f"layers: {output.layers} (the ACI: {output.aci_layers})")
    lines.append("artifacts:")
    lines.extend(f"  {path}" for path in planned.artifacts.all())
    if output.chained_aci:
        lines.append(
            "  and beside the ACI, one ACI per image layer (named by its diff_id) with its signature"
        )
    lines.extend(f"warning: {warning}" for warning in planned.warnings)
    return "\n".join(lines)


@click.command()
@recipe_argument
@recipe_options
@sign_options
@click.option(
    "--isolation",
    type=click.Choice(["oci", "runc", "chroot"]),
    help="How run steps are isolated (else $DUALBUILD_ISOLATION; default: probed once and remembered).",
)
@registry_options("registry bases")
@keyring_option("Public key(s) that must have signed an aci: base.")
@secret_option
@click.option(
    "--no-cache",
    is_flag=True,
    help="Run every step without looking in the step cache (the fresh trees are kept there).",
)
@click.option(
    "--extract-base",
    is_flag=True,
    help="Extract the base into a buildah container even when no step needs one (by default, stages"
    " without run steps or copies from a stage, on a tarball, archive or scratch base, are built in memory).",
)
@click.option(
    "--check-reproducible",
    is_flag=True,
    help="Build twice in fresh storage without the cache; exit 1 if any artifact differs.",
)
@json_option
def build(recipe: Path, check_reproducible: bool, as_json: bool, **given: Any) -> None:
    """Build RECIPE into a Docker image tarball and a signed ACI (and an OCI archive if asked).

    Every step's result is cached by the content of what it depends on (run steps by their
    text, as Docker does); an unchanged rebuild reuses the artifacts it finds up to date.
    Stages without run steps (or copies from another stage) on a tarball, archive or scratch base
    need no container: their base is read where it lies, never extracted.
    """
    request = build_request(recipe, given)
    if check_reproducible:
        _check_reproducible(request, as_json)
        return
    show_report(run_build(request), as_json)


def _check_reproducible(request: BuildRequest, as_json: bool) -> None:
    report, differences = check_reproducible(request)
    show_report(report, as_json)
    if differences:
        raise VerifyError(
            "the two builds differ:\n" + "\n".join(differences), hint="see the report's warnings"
        )
    click.echo("reproducible: two builds in fresh storage gave identical artifacts", err=True)


def show_report(report: Report, as_json: bool) -> None:
    """Print a build's report: JSON, or a line per artifact."""
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
        return
    for artifact in report.artifacts:
        click.echo(f"{artifact.format!s:7} {artifact.path}  {artifact.image_id}")
        if artifact.format is Format.ACI and report.signature is not None:
            click.echo(f"{'':7} {report.signature.file}  signed by {report.signature.signing_key}")


@click.command("convert")
@click.argument("source")
@click.option("--name", help="Image name (default: the one the source carries).")
@click.option("--version", "version", help="Image version (default: the source's tag or version label).")
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["docker", "aci", "oci"]),
    help="Formats to write (default: docker and aci).",
)
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), help="Output directory (default: ./dist)."
)
@sign_options
@registry_options("a registry source")
@keyring_option("Public key(s) that must have signed an ACI source.")
@json_option
def convert_command(
    source: str, name: str | None, version: str | None, formats: tuple[str, ...], as_json: bool, **given: Any
) -> None:
    """Convert an existing image into a Docker tarball and a signed ACI.

    SOURCE is a docker-archive or oci-archive tarball, an ACI (.aci), or a registry reference.
    """
    request = ConvertRequest(
        source=source, name=name, version=version, formats=formats or ("docker", "aci"),
        build=build_request(Path(source), given),
    )  # fmt: skip
    show_report(convert(request), as_json)


@click.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@keyring_option("Public key(s) the ACI must be signed by (default: your gpg keyring).")
def verify_command(paths: tuple[Path, ...], keyring: Path | None) -> None:
    """Check built artifacts (files, or folders holding them).

    For each build: the Docker tarball's digests and diff_ids, that its views of the image
    (manifest.json, index.json and the OCI manifest, the legacy json) agree, the ACI's layout,
    manifest and signature, that both hold the same tree entry by entry, and that the Docker
    config says what the ACI's manifest says (exec, user, group, env, workdir, ports, volumes,
    labels, annotations, platform).
    """
    sets = find_sets(list(paths))
    if not sets:
        raise UsageError("no .docker.tar or .aci files found", hint="name the files or the output folder")
    failed = [files.stem for files in sets if not _verified(files.stem, verify_set(files, keyring))]
    if failed:
        raise VerifyError(f"{len(failed)} of {len(sets)} checked builds failed verification")


def _verified(stem: str, problems: list[str]) -> bool:
    if problems:
        click.echo(f"FAIL {stem}")
        click.echo("\n".join(f"  {problem}" for problem in problems))
        return False
    click.echo(f"ok   {stem}")
    return True


@click.command()
def schema() -> None:
    """Print the JSON Schema of recipe format v1 (for editors such as taplo / Even Better TOML)."""
    click.echo(json.dumps(RECIPE_SCHEMA, indent=2))
