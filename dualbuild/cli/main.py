"""The command line: parse, build a request, call one function. Errors become messages here only."""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dualbuild import __version__, log
from dualbuild.build.buildah import Buildah
from dualbuild.build.cache import cached, prune
from dualbuild.build.stages import default_cache_dir
from dualbuild.cli.new import new_command
from dualbuild.cli.publish import publish_command
from dualbuild.convert import ConvertRequest
from dualbuild.convert import convert as run_convert
from dualbuild.errors import DualbuildError, Interrupted, Problem, RecipeError, UsageError, VerifyError
from dualbuild.pipeline import BuildRequest
from dualbuild.pipeline import build as run_build
from dualbuild.pipeline import check_reproducible as check_reproducible_build
from dualbuild.plan import make_plan, plan_to_dict
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.rules import parse_age_seconds
from dualbuild.recipe.schema import RECIPE_SCHEMA
from dualbuild.run import install_interrupt_handlers
from dualbuild.sign.keys import create_key, export_public_key
from dualbuild.verify.trees import find_sets, verify_set

# Internal errors (bugs) exit with EX_SOFTWARE so pipelines can tell them from user errors.
EXIT_INTERNAL = 70


def _report(error: DualbuildError) -> None:
    if isinstance(error, RecipeError):
        for problem in error.problems:
            click.echo(f"error: {problem}", err=True)
        count = len(error.problems)
        if count > 1:
            click.echo(f"{count} problems found", err=True)
        return
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"  hint: {error.hint}", err=True)


class _Group(click.Group):
    """Turns dualbuild's errors into messages and exit codes, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DualbuildError as error:
            _report(error)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`dualbuild cache ls | head`): stop quietly, as SIGPIPE would.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stream for good
            ctx.exit(141)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - the one place that catches everything
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"internal error: {type(error).__name__}: {error}", err=True)
            click.echo("  hint: this is a bug in dualbuild; run with --debug for the traceback", err=True)
            ctx.exit(EXIT_INTERNAL)


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    args: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise UsageError(f"--build-arg {value!r} is not KEY=VALUE", hint="e.g. --build-arg GREETING=hi")
        args[name] = text
    return args


def _recipe_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `plan` and `build` share: build args, context, output folder."""
    for option in reversed(
        [
            click.option(
                "--build-arg",
                "build_args",
                multiple=True,
                metavar="KEY=VALUE",
                help="Override an [args] value.",
            ),
            click.option(
                "--context",
                type=click.Path(path_type=Path, file_okay=False),
                help="Build context (default: the recipe's folder).",
            ),
            click.option(
                "--out",
                type=click.Path(path_type=Path, file_okay=False),
                help="Output directory (default: output.dir).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dualbuild")
@click.option("-v", "--verbose", count=True, help="More output: -v timings, -vv every command run.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Build a Docker image tarball and a signed appc ACI from one TOML recipe."""
    ctx.obj = {"debug": debug}
    log.setup(verbose, quiet=quiet)


@cli.command()
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


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@_recipe_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan(
    recipe: Path, build_args: tuple[str, ...], context: Path | None, out: Path | None, as_json: bool
) -> None:
    """Show what a build would do: stages, steps with args substituted, output files."""
    built = make_plan(
        load_recipe(recipe), build_args=_build_args(build_args), context=context, out_dir=out,
        environ=os.environ,
    )  # fmt: skip
    data = plan_to_dict(built)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(_plan_text(data))


def _plan_text(data: dict[str, Any]) -> str:
    image = data["image"]
    lines = [f"image {image['name']}:{image['version']} ({image['os']}/{image['arch']})"]
    if image["tags"]:
        lines.append(f"  tags: {', '.join(image['tags'])}")
    stages = data["stages"]
    for stage in stages:
        final = " (final)" if stage["final"] else ""
        lines.append(f"[{stage['number']}/{len(stages)} {stage['name']}]{final} from {stage['from']}")
        for step in stage["steps"]:
            lines.append(f"  step {step['number']}/{len(stage['steps'])} {step['summary']}")
    lines.append(f"source_date_epoch: {data['source_date_epoch']}")
    lines.append("artifacts:")
    lines.extend(f"  {path}" for path in data["artifacts"].values() if path)
    lines.extend(f"warning: {warning}" for warning in data["warnings"])
    return "\n".join(lines)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@_recipe_options
@click.option(
    "--sign-key",
    metavar="KEY",
    help="gpg key for the ACI signature (else $DUALBUILD_SIGN_KEY, else [sign].key).",
)
@click.option("--no-sign", is_flag=True, help="Write the ACI without a signature.")
@click.option(
    "--isolation",
    type=click.Choice(["oci", "runc", "chroot"]),
    envvar="DUALBUILD_ISOLATION",
    help="How run steps are isolated (default: probed once and remembered).",
)
@click.option("--tls-verify/--no-tls-verify", default=True, help="Verify TLS when pulling registry bases.")
@click.option(
    "--authfile",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Registry credentials (default: REGISTRY_AUTH_FILE, containers auth.json, ~/.docker/config.json).",
)
@click.option(
    "--keyring",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Public key(s) that must have signed an aci: base.",
)
@click.option("--no-cache", is_flag=True, help="Run every step; use and keep no cached trees.")
@click.option(
    "--check-reproducible",
    is_flag=True,
    help="Build twice in fresh storage without the cache; exit 1 if any artifact differs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def build(
    recipe: Path, build_args: tuple[str, ...], context: Path | None, out: Path | None, sign_key: str | None,
    no_sign: bool, isolation: str | None, tls_verify: bool, authfile: Path | None, keyring: Path | None,
    no_cache: bool, check_reproducible: bool, as_json: bool,
) -> None:  # fmt: skip
    """Build RECIPE into a Docker image tarball and a signed ACI (and an OCI archive if asked).

    Every step's result is cached by the content of what it depends on (run steps by their
    text, as Docker does); an unchanged rebuild reuses the artifacts it finds up to date.
    """
    request = BuildRequest(
        recipe=recipe, build_args=_build_args(build_args), context=context, out_dir=out, sign=not no_sign,
        sign_key=sign_key, isolation=isolation, tls_verify=tls_verify, authfile=authfile, keyring=keyring,
        cache=not no_cache,
    )  # fmt: skip
    if not check_reproducible:
        _print_report(run_build(request), as_json)
        return
    report, differences = check_reproducible_build(request)
    _print_report(report, as_json)
    if differences:
        raise VerifyError(
            "the two builds differ:\n" + "\n".join(differences), hint="see the report's warnings"
        )
    click.echo("reproducible: two builds in fresh storage gave identical artifacts", err=True)


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, artifact in report["artifacts"].items():
        click.echo(f"{name:7} {artifact['file']}  {artifact['image_id']}")
        if "signature" in artifact:
            click.echo(f"{'':7} {artifact['signature']}  signed by {artifact['signing_key']}")


@cli.command()
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
@click.option("--sign-key", metavar="KEY", help="gpg key for the ACI signature (else $DUALBUILD_SIGN_KEY).")
@click.option("--no-sign", is_flag=True, help="Write the ACI without a signature.")
@click.option("--tls-verify/--no-tls-verify", default=True, help="Verify TLS when pulling a registry source.")
@click.option("--authfile", type=click.Path(path_type=Path, dir_okay=False), help="Registry credentials.")
@click.option(
    "--keyring",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Public key(s) that must have signed an ACI source.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def convert(
    source: str, name: str | None, version: str | None, formats: tuple[str, ...], out: Path | None,
    sign_key: str | None, no_sign: bool, tls_verify: bool, authfile: Path | None, keyring: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Convert an existing image into a Docker tarball and a signed ACI.

    SOURCE is a docker-archive or oci-archive tarball, an ACI (.aci), or a registry reference.
    """
    request = ConvertRequest(
        source=source, name=name, version=version, formats=formats or ("docker", "aci"),
        build=BuildRequest(
            recipe=Path(source), out_dir=out, sign=not no_sign, sign_key=sign_key, tls_verify=tls_verify,
            authfile=authfile, keyring=keyring,
        ),
    )  # fmt: skip
    _print_report(run_convert(request), as_json)


@cli.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--keyring",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Public key(s) the ACI must be signed by (default: your gpg keyring).",
)
def verify_command(paths: tuple[Path, ...], keyring: Path | None) -> None:
    """Check built artifacts (files, or folders holding them).

    For each build: the Docker tarball's digests and diff_ids, the ACI's layout and manifest,
    the ACI's signature, and that both hold the same tree entry by entry.
    """
    sets = find_sets(list(paths))
    if not sets:
        raise UsageError("no .docker.tar or .aci files found", hint="name the files or the output folder")
    failed = []
    for image_set in sets:
        problems = verify_set(image_set, keyring)
        if problems:
            failed.append(image_set.stem)
            click.echo(f"FAIL {image_set.stem}")
            click.echo("\n".join(f"  {problem}" for problem in problems))
        else:
            click.echo(f"ok   {image_set.stem}")
    if failed:
        raise VerifyError(f"{len(failed)} of {len(sets)} checked builds failed verification")


@cli.group()
def cache() -> None:
    """Inspect and prune the step cache.

    The cache holds buildah images named localhost/dualbuild-cache, and Debian bootstrap
    tarballs under the cache folder (~/.cache/dualbuild).
    """


@cache.command("ls")
def cache_ls() -> None:
    """List cached trees, oldest first."""
    for entry in cached(Buildah(), default_cache_dir()):
        when = datetime.datetime.fromtimestamp(entry.created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{entry.key[:16]}  {entry.image_id[:12]}  {when}  {entry.size}")


@cache.command("prune")
@click.option("--older-than", metavar="AGE", help="Only entries older than AGE (e.g. 7d, 12h, 1w).")
def cache_prune(older_than: str | None) -> None:
    """Remove cached trees (all of them, or those older than --older-than)."""
    seconds = None
    if older_than is not None:
        seconds = parse_age_seconds(older_than)
        if seconds is None:
            raise UsageError(f"--older-than {older_than!r} is not an age", hint="e.g. 30m, 12h, 7d, 2w")
    removed = prune(Buildah(), default_cache_dir(), older_than=seconds)
    click.echo(f"removed {len(removed)} cached tree{'s' if len(removed) != 1 else ''}")


@cli.group()
def key() -> None:
    """Manage ACI signing keys."""


@key.command("create")
@click.option("--name", required=True, help="Name on the key, e.g. 'Example Releases'.")
@click.option("--email", required=True, help="Email on the key.")
@click.option("--comment", default="", help="Comment on the key's user id.")
@click.option(
    "--export",
    "export",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the armored public key here.",
)
def key_create(name: str, email: str, comment: str, export: Path | None) -> None:
    """Create an RSA 4096 signing key (the kind rkt verifies) in the keyring ($GNUPGHOME)."""
    home = os.environ.get("GNUPGHOME")
    fingerprint = create_key(name, email, comment=comment, gnupghome=Path(home) if home else None)
    if export is not None:
        export_public_key(fingerprint, export, gnupghome=Path(home) if home else None)
        click.echo(f"public key written to {export}", err=True)
    click.echo(fingerprint)
    click.echo(f'use it in a recipe:\n[sign]\nkey = "{fingerprint}"', err=True)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of recipe format v1 (for editors such as taplo / Even Better TOML)."""
    click.echo(json.dumps(RECIPE_SCHEMA, indent=2))


cli.add_command(new_command)
cli.add_command(publish_command)


def main() -> None:
    """Run the command line (``dualbuild.entry.main`` installs the signal handlers first)."""
    # SIGINT/SIGTERM raise Interrupted from here on: cleanup runs, and the exit is 130/143.
    # The handlers stay until the process ends, so a late signal never kills it half-way out.
    install_interrupt_handlers()
    try:
        cli(prog_name="dualbuild")
    except Interrupted as interrupted:  # arrived after the command finished, while exiting
        sys.exit(interrupted.exit_code)
