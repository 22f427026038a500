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
from dualbuild.recipe.mounts import SECRET_ID
from dualbuild.settings import Overrides, SecretSource

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

secret_option = click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="id=ID,src=FILE|env=VAR",
    help="A build secret for the run steps that name ID: a file, or a variable of this environment"
    " (overrides the recipe's src/env for that id; never stored).",
)


def parse_secrets(values: tuple[str, ...]) -> tuple[SecretSource, ...]:
    """``--secret id=ID,src=FILE`` / ``id=ID,env=VAR`` values (BuildKit's and buildah's spelling).

    ``type=file|env`` may say which; ``source`` stands for ``src``; without src or env, the
    variable named ID is read, as BuildKit does. The last one of an id wins.

    Raises:
        UsageError: a value is not such a list.
    """
    sources: dict[str, SecretSource] = {}
    for value in values:
        fields: dict[str, str] = {}
        for item in value.split(","):
            name, sep, text = item.partition("=")
            name = {"source": "src"}.get(name.strip(), name.strip())
            if not sep or name not in ("id", "src", "env", "type") or name in fields:
                raise UsageError(
                    f"--secret {value!r} is not id=ID,src=FILE or id=ID,env=VAR",
                    hint="e.g. --secret id=npmrc,src=$HOME/.npmrc or --secret id=token,env=API_TOKEN",
                )
            fields[name] = text
        secret_id, kind = fields.get("id", ""), fields.get("type")
        if not SECRET_ID.fullmatch(secret_id):
            raise UsageError(
                f"--secret {value!r}: {secret_id!r} is not a secret id", hint="letters, digits, _ . -"
            )
        if "src" in fields and "env" in fields:
            raise UsageError(f"--secret {value!r} names both a file and a variable", hint="give src or env")
        if (
            kind not in (None, "file", "env")
            or (kind == "file" and "src" not in fields)
            or (kind == "env" and "src" in fields)
        ):
            raise UsageError(
                f"--secret {value!r}: type={kind} does not fit", hint="type=file with src, type=env"
            )
        if "src" in fields:
            sources[secret_id] = SecretSource(id=secret_id, file=Path(fields["src"]).absolute())
        else:
            sources[secret_id] = SecretSource(id=secret_id, env=fields.get("env") or secret_id)
    return tuple(sources.values())


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
            secrets=parse_secrets(given.get("secrets", ())),
        ),
        sign=not given.get("no_sign", False),
        options=BuildOptions(
            tls_verify=given.get("tls_verify", True),
            authfile=given.get("authfile"),
            keyring=given.get("keyring"),
            cache=not given.get("no_cache", False),
            extract_base=given.get("extract_base", False),
        ),
        environ=dict(os.environ),
    )
