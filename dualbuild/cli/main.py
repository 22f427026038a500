"""The command line: the ``dualbuild`` group, its commands, and the one error boundary.

Every command parses its options, builds a request and calls one function; dualbuild's errors
become messages and exit codes here only, never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from dualbuild import __version__, log
from dualbuild.cli.build import build, convert_command, plan, schema, validate, verify_command
from dualbuild.cli.new import new_command
from dualbuild.cli.publish import publish_command
from dualbuild.cli.tools import cache, key
from dualbuild.errors import DualbuildError, Interrupted, RecipeError
from dualbuild.run import install_interrupt_handlers

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


for command in (
    validate, plan, build, convert_command, verify_command, publish_command, new_command, cache, key, schema,
):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    """Run the command line (``dualbuild.cli.entry.main`` installs the signal handlers first)."""
    # SIGINT/SIGTERM raise Interrupted from here on: cleanup runs, and the exit is 130/143.
    # The handlers stay until the process ends, so a late signal never kills it half-way out.
    install_interrupt_handlers()
    try:
        cli(prog_name="dualbuild")
    except Interrupted as interrupted:  # arrived after the command finished, while exiting
        sys.exit(interrupted.exit_code)
