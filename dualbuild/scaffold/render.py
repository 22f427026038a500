"""Scaffolding for ``dualbuild new``: render a template folder into a new recipe folder.

A template is a folder under ``templates/`` (shipped in the wheel as ``dualbuild.templates``).
Its ``template.toml`` holds a one-line ``description`` and a ``[variables.NAME]`` table per
variable (``type``, ``default``, ``help``, ``choices``, ``pattern``). Every other file is copied
into the target folder under its path rendered with Jinja; a file ending in ``.jinja`` has its
content rendered too, and loses the suffix. A path that renders empty leaves the file out.

Modelled on copier (STYLE.md B2 item 14): one Jinja environment with StrictUndefined, template
errors that name the file and line, nothing written outside the target folder, no overwrite
without ``force``, a ``pretend`` mode, and the rendered recipe validated before anything is
written.
"""

from __future__ import annotations

import difflib
import enum
import posixpath
import tomllib
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

import jinja2

from dualbuild.errors import DualbuildError, Problem, RecipeError, UsageError
from dualbuild.files import write_atomically
from dualbuild.recipe import parse_recipe_bytes
from dualbuild.scaffold.variables import (
    BUILTIN_VARIABLES,
    Value,
    Variable,
    VarType,
    read_variable,
    template_error,
    toml_value,
)

TEMPLATE_FILE = "template.toml"
RECIPE_FILE = "recipe.toml"
JINJA_SUFFIX = ".jinja"
TEMPLATE_KEYS = ("description", "variables")


@dataclass(frozen=True, kw_only=True)
class Template:
    """A template folder and what its ``template.toml`` declares."""

    name: str
    description: str
    variables: tuple[Variable, ...]
    folder: Traversable


@dataclass(frozen=True, kw_only=True)
class NewRequest:
    """What ``dualbuild new`` was asked to do."""

    template: str
    directory: Path | None = None  # default: the last segment of the image name, in the cwd
    assignments: tuple[str, ...] = ()  # KEY=VALUE, as given to --set
    force: bool = False
    pretend: bool = False


class Action(enum.StrEnum):
    """What happens to one target file."""

    CREATE = "create"
    OVERWRITE = "overwrite"
    IDENTICAL = "identical"  # it already holds exactly this content: left alone


@dataclass(frozen=True, kw_only=True)
class PlannedFile:
    """One rendered file and where it goes."""

    path: Path
    data: bytes
    action: Action


@dataclass(frozen=True, kw_only=True)
class NewResult:
    """The outcome of ``new_recipe``: the files written (or, with pretend, that would be)."""

    directory: Path
    values: Mapping[str, Value]
    files: tuple[PlannedFile, ...]
    written: bool


# Asks for one variable, given its default as text; returns the answer as text.
Ask = Callable[[Variable, str | None], str]


def templates_root() -> Traversable:
    """The folder of the templates that ship with dualbuild."""
    return files("dualbuild.templates")


def list_templates(root: Traversable | None = None) -> tuple[Template, ...]:
    """Every template under ``root`` (default: the shipped ones), sorted by name."""
    root = root if root is not None else templates_root()
    return tuple(load_template(name, root) for name in _template_names(root))


def load_template(name: str, root: Traversable | None = None) -> Template:
    """Read one template's ``template.toml``.

    Raises:
        UsageError: there is no template of that name.
        DualbuildError: the template itself is broken.
    """
    root = root if root is not None else templates_root()
    names = _template_names(root)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        raise UsageError(
            f"there is no template {name!r}",
            hint=f"did you mean {close[0]!r}?" if close else "`dualbuild new --list` shows the templates",
        )
    folder = root.joinpath(name)
    where = f"{name}/{TEMPLATE_FILE}"
    try:
        document = tomllib.loads(folder.joinpath(TEMPLATE_FILE).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise template_error(where, str(error)) from None
    if unknown := sorted(document.keys() - set(TEMPLATE_KEYS)):
        raise template_error(where, f"unknown key {unknown[0]!r} (known: {', '.join(TEMPLATE_KEYS)})")
    description = document.get("description")
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise template_error(where, "description: must be a one-line string")
    table = document.get("variables", {})
    if not isinstance(table, dict):
        raise template_error(where, "variables: must be a table of [variables.NAME] tables")
    declared = {key: read_variable(where, key, spec) for key, spec in table.items()}
    for key in BUILTIN_VARIABLES:
        if declared.get(key, BUILTIN_VARIABLES[key]).type is not VarType.STR:
            raise template_error(where, f"variables.{key}.type: {key} is always a str")
    builtins = [declared.pop(key, variable) for key, variable in BUILTIN_VARIABLES.items()]
    return Template(
        name=name, description=description.strip(), variables=(*builtins, *declared.values()), folder=folder
    )


def new_recipe(request: NewRequest, *, ask: Ask | None = None, root: Traversable | None = None) -> NewResult:
    """Render a template into a folder: the whole of ``dualbuild new``.

    Args:
        request: the template, target folder, ``--set`` values and flags.
        ask: called for each variable not given with ``--set`` (on a terminal); without it the
            defaults are used and nothing waits for input.
        root: where the templates are (default: the shipped ones).

    Returns:
        The files, with what was done to each; nothing is written when ``request.pretend``.

    Raises:
        UsageError: unknown template, bad ``--set``, a file that would be overwritten without
            ``force``, or a path leading outside the target folder.
        RecipeError: the rendered recipe is invalid (nothing is written).
        DualbuildError: the template is broken, or writing failed.
    """
    template = load_template(request.template, root)
    environment = _environment(template)
    values = _resolve_values(template, environment, _parse_assignments(request.assignments), ask)
    directory = request.directory or Path(posixpath.basename(str(values["name"])))
    rendered = _render_files(template, environment, values)
    _validate_recipe(template, rendered, directory)
    planned = _plan_files(directory, rendered, force=request.force)
    if not request.pretend:
        _write_files(planned)
    return NewResult(directory=directory, values=values, files=planned, written=not request.pretend)


def _template_names(root: Traversable) -> list[str]:
    return sorted(e.name for e in root.iterdir() if e.is_dir() and e.joinpath(TEMPLATE_FILE).is_file())


def _parse_assignments(assignments: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {text!r} is not KEY=VALUE", hint="e.g. --set name=example.com/hello")
        values[key.strip()] = value  # the last --set of a key wins, as with --build-arg
    return values


def _resolve_values(
    template: Template, environment: jinja2.Environment, given: Mapping[str, str], ask: Ask | None
) -> dict[str, Value]:
    known = [variable.name for variable in template.variables]
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise UsageError(
                f"template {template.name!r} has no variable {key!r}",
                hint=f"did you mean {close[0]!r}?" if close else f"its variables: {', '.join(known)}",
            )
    values: dict[str, Value] = {}
    for variable in template.variables:
        if variable.name in given:
            values[variable.name] = variable.parse(given[variable.name])
            continue
        default = _render_default(template, environment, variable, values)
        if ask is not None:
            answer = ask(variable, None if default is None else variable.format(default))
            values[variable.name] = variable.parse(answer)
        elif default is None:
            raise UsageError(
                f"template {template.name!r} needs a value for {variable.name!r} ({variable.help})",
                hint=f"pass --set {variable.name}=VALUE",
            )
        else:
            # A str default may have been rendered from other answers, so it is checked like one.
            values[variable.name] = variable.parse(default) if isinstance(default, str) else default
    return values


def _render_default(
    template: Template, environment: jinja2.Environment, variable: Variable, values: Mapping[str, Value]
) -> Value | None:
    if not isinstance(variable.default, str):
        return variable.default
    try:
        return environment.from_string(variable.default).render(_context(values))
    except jinja2.TemplateError as error:
        where = f"{template.name}/{TEMPLATE_FILE}"
        raise template_error(where, f"variables.{variable.name}.default: {error}") from None


def _context(values: Mapping[str, Value]) -> dict[str, object]:
    # Lists reach Jinja as lists, so that templates can write `["passwd"] + packages`.
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def _environment(template: Template) -> jinja2.Environment:
    def load(source: str) -> tuple[str, str, Callable[[], bool]]:
        text = template.folder.joinpath(*source.split("/")).read_text(encoding="utf-8")
        # The file name Jinja gives errors and traceback frames: TEMPLATE/PATH.
        return text, f"{template.name}/{source}", lambda: True

    # The output is TOML, not HTML: no autoescape; templates put values through `| toml`.
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined, autoescape=False,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    environment.filters["toml"] = toml_value
    environment.filters["basename"] = posixpath.basename
    return environment


def _template_files(folder: Traversable, prefix: str = "") -> Iterator[str]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        relative = f"{prefix}{entry.name}"
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _template_files(entry, f"{relative}/")
        elif entry.is_file() and relative != TEMPLATE_FILE:
            yield relative


def _render_files(
    template: Template, environment: jinja2.Environment, values: Mapping[str, Value]
) -> dict[PurePosixPath, bytes]:
    context = _context(values)
    rendered: dict[PurePosixPath, bytes] = {}
    for source in _template_files(template.folder):
        where = f"{template.name}/{source}"
        try:
            target_text = environment.from_string(source.removesuffix(JINJA_SUFFIX)).render(context)
        except jinja2.TemplateError as error:
            raise template_error(where, f"in the file name: {error}") from None
        if not target_text or target_text.endswith("/"):
            continue  # a name that renders empty leaves the file out
        target = PurePosixPath(target_text)
        if target.is_absolute() or ".." in target.parts or not target.parts or "\\" in target_text:
            raise UsageError(
                f"refusing to write {target_text!r} (from template file {where}): it is not inside DIR",
                hint="check the values given with --set",
            )
        if source.endswith(JINJA_SUFFIX):
            data = _render_file(environment, template, source, context).encode("utf-8")
        else:
            data = template.folder.joinpath(*source.split("/")).read_bytes()
        if target in rendered:
            raise template_error(where, f"renders to {str(target)!r}, as another file does")
        rendered[target] = data
    return rendered


def _render_file(
    environment: jinja2.Environment, template: Template, source: str, context: Mapping[str, object]
) -> str:
    filename = f"{template.name}/{source}"
    try:
        return environment.get_template(source).render(context)
    except jinja2.TemplateSyntaxError as error:
        raise template_error(filename, error.message or str(error), error.lineno) from None
    except (jinja2.TemplateError, TypeError, ValueError) as error:
        # Jinja rewrites the traceback so that template lines appear as frames of that file.
        lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
        raise template_error(filename, str(error), lines[-1] if lines else None) from None


def _validate_recipe(template: Template, rendered: Mapping[PurePosixPath, bytes], directory: Path) -> None:
    data = rendered.get(PurePosixPath(RECIPE_FILE))
    if data is None:
        raise template_error(template.name, f"it renders no {RECIPE_FILE}")
    path = directory / RECIPE_FILE
    try:
        parse_recipe_bytes(data, path)
    except RecipeError as error:
        summary = Problem(
            file=str(path), key="",
            message=f"the recipe rendered from template {template.name!r} is invalid, so nothing was written",
            hint="check the values given with --set (or the answers to the prompts)",
        )  # fmt: skip
        raise RecipeError([*error.problems, summary]) from None


def _plan_files(
    directory: Path, rendered: Mapping[PurePosixPath, bytes], *, force: bool
) -> tuple[PlannedFile, ...]:
    base = directory.resolve()
    planned: list[PlannedFile] = []
    conflicts: list[str] = []
    for relative, data in sorted(rendered.items()):
        target = directory.joinpath(*relative.parts)
        # resolve() follows symbolic links already in the folder, which could lead out of it.
        if not target.resolve().is_relative_to(base):
            raise UsageError(f"refusing to write {target}: it leads outside {directory} (a symbolic link?)")
        for folder in (directory, *(directory.joinpath(*p.parts) for p in relative.parents)):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"refusing to write {target}: {folder} is not a folder")
        if target.is_dir():
            raise UsageError(f"refusing to write {target}: it is a folder")
        action = Action.CREATE
        if target.exists():
            if target.read_bytes() == data:
                action = Action.IDENTICAL
            elif force:
                action = Action.OVERWRITE
            else:
                conflicts.append(str(target))
        planned.append(PlannedFile(path=target, data=data, action=action))
    if conflicts:
        raise UsageError(
            f"refusing to overwrite {', '.join(conflicts)}: it is there with other content",
            hint="pass --force to overwrite, or choose another DIR",
        )
    return tuple(planned)


def _write_files(planned: Sequence[PlannedFile]) -> None:
    for item in planned:
        if item.action is Action.IDENTICAL:
            continue
        try:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            # An overwritten file keeps its mode (an executable stays executable).
            mode = item.path.stat().st_mode & 0o7777 if item.action is Action.OVERWRITE else None
            write_atomically(item.path, item.data, mode=mode)
        except OSError as error:
            raise DualbuildError(f"cannot write {item.path}: {error.strerror or error}") from None
