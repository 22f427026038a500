"""``dualbuild new``: the click command and its prompts; the work is done in ``scaffold/render.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dualbuild.errors import DualbuildError, UsageError
from dualbuild.scaffold import render as scaffold
from dualbuild.scaffold.render import Action, NewRequest, NewResult
from dualbuild.scaffold.variables import Variable, VarType


def stdin_is_interactive() -> bool:
    """True when a person can answer prompts (stdin is a terminal)."""
    return sys.stdin is not None and sys.stdin.isatty()


@click.command("new")
@click.argument("template", required=False)
@click.argument("directory", metavar="[DIR]", required=False, type=click.Path(path_type=Path))
@click.option(
    "--set", "assignments", multiple=True, metavar="KEY=VALUE",
    help="Give a template variable its value (repeatable); it is then not asked for.",
)  # fmt: skip
@click.option("--list", "list_only", is_flag=True, help="List the templates, one a line, and exit.")
@click.option("--force", is_flag=True, help="Overwrite files that exist with other content.")
@click.option("--pretend", is_flag=True, help="Show what would be written, and write nothing.")
def new_command(
    template: str | None,
    directory: Path | None,
    assignments: tuple[str, ...],
    list_only: bool,
    force: bool,
    pretend: bool,
) -> None:
    """Start a recipe from TEMPLATE in DIR (default: a folder named after the image).

    On a terminal, variables not given with --set are asked for; otherwise their defaults are
    used. The rendered recipe is validated before anything is written.
    """
    if list_only:
        _print_templates()
        return
    if template is None:
        raise UsageError("which template? e.g. `dualbuild new go-app`", hint="see `dualbuild new --list`")
    request = NewRequest(
        template=template, directory=directory, assignments=assignments, force=force, pretend=pretend
    )
    _print_result(scaffold.new_recipe(request, ask=_ask if stdin_is_interactive() else None))


def _print_templates() -> None:
    templates = scaffold.list_templates()
    width = max((len(t.name) for t in templates), default=0)
    for template in templates:
        click.echo(f"{template.name:<{width}}  {template.description}")


def _ask(variable: Variable, default: str | None) -> str:
    label = f"{variable.name}: {variable.help}"
    if variable.type is VarType.BOOL:
        answer = click.confirm(label, default=None if default is None else variable.parse(default) is True)
        return variable.format(answer)

    def check(text: str) -> str:
        # Raising click's own error makes click say why and ask again.
        try:
            variable.parse(text)
        except DualbuildError as error:
            raise click.BadParameter(error.message) from None
        return text

    choices = click.Choice([variable.format(c) for c in variable.choices]) if variable.choices else None
    return str(click.prompt(label, default=default, type=choices, value_proc=check))


_DONE = {Action.CREATE: "created", Action.OVERWRITE: "overwrote", Action.IDENTICAL: "unchanged"}
_WOULD = {Action.CREATE: "would create", Action.OVERWRITE: "would overwrite", Action.IDENTICAL: "unchanged"}


def _print_result(result: NewResult) -> None:
    for planned in result.files:
        verb = _DONE[planned.action] if result.written else _WOULD[planned.action]
        click.echo(f"{verb:<15} {planned.path}")
    if not result.written:
        for planned in result.files:
            if planned.action is not Action.IDENTICAL:
                click.echo(f"\n--- {planned.path}")
                click.echo(planned.data.decode("utf-8", "replace"), nl=False)
        return
    click.echo(f"next: dualbuild plan {result.directory / scaffold.RECIPE_FILE}")
