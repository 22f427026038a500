"""Options several commands share, and the one place their values become typed requests.

A command takes its options as ``**given`` and hands them to :func:`build_request` (or
:func:`parse_build_args`), so every command that builds reads ``--sign-key``, ``--out`` or
``--authfile`` the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from dualbuild.builder.stages import BuildOptions
from dualbuild.errors import UsageError
from dualbuild.pipeline import BuildRequest
from dualbuild.settings import Overrides

F = TypeVar("F", bound=Callable[..., Any])


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


recipe_argument = click.argument("recipe", type=click.Path(path_type=Path))

recipe_options = _stack(
    click.option(
        "--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="Override an [args] value."
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
)

sign_options = _stack(
    click.option(
        "--sign-key",
        metavar="KEY",
        help="gpg key for the ACI signature (else $DUALBUILD_SIGN_KEY, else [sign].key).",
    ),
    click.option("--no-sign", is_flag=True, help="Write the ACI without a signature."),
)


def registry_options(what: str) -> Callable[[F], F]:
    """``--tls-verify/--no-tls-verify`` and ``--authfile``, for pulling from or pushing to ``what``."""
    return _stack(
        click.option("--tls-verify/--no-tls-verify", default=True, help=f"Verify TLS of {what}."),
        click.option(
            "--authfile",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Registry credentials (default: REGISTRY_AUTH_FILE, containers auth.json, ~/.docker/config.json).",
        ),
    )


def keyring_option(help_text: str) -> Callable[[F], F]:
    """``--keyring FILE``: public keys a signature must verify with."""
    return click.option(
        "--keyring", type=click.Path(path_type=Path, dir_okay=False, exists=True), help=help_text
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")


def parse_build_args(values: tuple[str, ...]) -> dict[str, str]:
    """``--build-arg KEY=VALUE`` values as a mapping (the last one of a key wins).

    Raises:
        UsageError: a value is not KEY=VALUE.
    """
    args: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise UsageError(f"--build-arg {value!r} is not KEY=VALUE", hint="e.g. --build-arg GREETING=hi")
        args[name] = text
    return args


def build_request(recipe: Path, given: Mapping[str, Any]) -> BuildRequest:
    """The request of a build from the options the command took (those it lacks are defaults)."""
    return BuildRequest(
        recipe=recipe,
        build_args=parse_build_args(given.get("build_args", ())),
        overrides=Overrides(
            context=given.get("context"),
            out_dir=given.get("out"),
            sign_key=given.get("sign_key"),
            isolation=given.get("isolation"),
        ),
        sign=not given.get("no_sign", False),
        options=BuildOptions(
            tls_verify=given.get("tls_verify", True),
            authfile=given.get("authfile"),
            keyring=given.get("keyring"),
            cache=not given.get("no_cache", False),
        ),
        environ=dict(os.environ),
    )
