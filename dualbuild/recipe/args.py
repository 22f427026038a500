"""Build args into a recipe: ``${NAME}`` replaced in its strings before the recipe is read.

The readers validate the substituted document, so a value that an arg makes bad (a newline in
a path, an absolute copy source) is refused as if it were written so: exit 2, at its key and
line. Two kinds of strings keep their ``${...}``:

- a ``run`` string is shell code: the step's environment carries every arg and the shell
  expands it, as Docker's RUN does, so ``--build-arg V='$(id -u)'`` stays data (``$${`` still
  stands for ``${``, and a name that is no arg is still refused, as in format v1);
- in ``[app].env`` a ``${NAME}`` that names no arg is the environment's, expanded against the
  image's config (Docker's ENV), as ``$NAME`` is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dualbuild.errors import Problem, RecipeError
from dualbuild.recipe.positions import KeyPath
from dualbuild.recipe.reader import Reader
from dualbuild.recipe.rules import ARG_NAME, ARG_REFERENCE

_APP_ENV: KeyPath = ("app", "env")


def effective_args(
    declared: Mapping[str, str], build_args: Mapping[str, str], recipe_name: str
) -> dict[str, str]:
    """The recipe's [args] with the ``--build-arg`` values over them.

    Raises:
        RecipeError: a --build-arg names no arg of the recipe.
    """
    problems = []
    for name in build_args:
        if name not in declared:
            defined = ", ".join(declared) or "none"
            hint = f"declare it in [args] of {recipe_name} (defined: {defined})"
            if not ARG_NAME.fullmatch(name):
                hint = "arg names are letters, digits and '_'"
            problems.append(
                Problem(file="--build-arg", key=name, message="not an arg of the recipe", hint=hint)
            )
    if problems:
        raise RecipeError(problems)
    return {**declared, **build_args}


def substitute_document(
    reader: Reader, document: dict[str, object], args: Mapping[str, str]
) -> dict[str, object]:
    """The document with every arg substituted (not in ``[args]`` itself); problems go to ``reader``.

    ``reader.written`` learns each changed string as written, so that a problem found in the
    result can say where its value came from.
    """
    return {
        key: value if key == "args" else _substitute(reader, value, (key,), args)
        for key, value in document.items()
    }


def _substitute(reader: Reader, value: object, path: KeyPath, args: Mapping[str, str]) -> object:
    if isinstance(value, dict):
        return {key: _substitute(reader, item, (*path, key), args) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(reader, item, (*path, index), args) for index, item in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    result = _substitute_text(
        reader, value, path, args, env_value=path[:-1] == _APP_ENV, shell=_is_run_string(path)
    )
    if result != value:
        reader.written[path] = value
    return result


def _is_run_string(path: KeyPath) -> bool:
    return len(path) == 5 and path[0] == "stages" and path[2] == "steps" and path[4] == "run"


def _substitute_text(
    reader: Reader, text: str, path: KeyPath, args: Mapping[str, str], *, env_value: bool, shell: bool
) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return "${" + name + "}"
        if name in args:
            return match.group(0) if shell else args[name]
        if env_value:
            return match.group(0)  # the environment's, expanded with the config
        hint = (
            f'define it in [args], e.g. {name} = "..." (write $${{{name}}} for a literal ${{{name}}})'
            if ARG_NAME.fullmatch(name)
            else "write $${ for a literal ${"
        )
        reader.error(path, f"${{{name}}} does not name a build arg", hint)
        refused.add(path)
        return match.group(0)

    refused: set[KeyPath] = set()
    result = ARG_REFERENCE.sub(replace, text)
    reader.refused |= refused
    return result
