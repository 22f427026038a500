"""Settings a command takes from its options, the environment and the recipe, resolved in one place.

The order is always: the command-line option, then the environment variable, then the recipe,
then a documented default. ``source_date_epoch`` is the one exception, kept from format v1: the
recipe's value wins over ``$SOURCE_DATE_EPOCH``, since a recipe that pins its date means it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.errors import Problem, RecipeError
from dualbuild.recipe.model import DEFAULT_SOURCE_DATE_EPOCH, MAX_SOURCE_DATE_EPOCH, Recipe, RunStep

SIGN_KEY_ENV = "DUALBUILD_SIGN_KEY"
PASSPHRASE_ENV = "DUALBUILD_SIGN_PASSPHRASE"
ISOLATION_ENV = "DUALBUILD_ISOLATION"
SOURCE_DATE_EPOCH_ENV = "SOURCE_DATE_EPOCH"


@dataclass(frozen=True, kw_only=True)
class SecretSource:
    """Where a secret's bytes come from: a file or a variable of dualbuild's environment.

    ``named`` says who named it, for an error found when the build starts: the recipe's
    file, key and line, or the command line (then ``line`` is None).
    """

    id: str
    file: Path | None = None
    env: str | None = None
    named: str = "--secret"
    key: str = ""
    line: int | None = None

    def problem(self, message: str, hint: str) -> Problem:
        """A problem with this secret, where it was named."""
        return Problem(file=self.named, key=self.key, message=message, line=self.line, hint=hint)


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """What the command line says; None where it says nothing."""

    context: Path | None = None
    out_dir: Path | None = None
    sign_key: str | None = None
    isolation: str | None = None
    secrets: tuple[SecretSource, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where a build reads and writes, how it signs and isolates, resolved once.

    Attributes:
        context: The build context, absolute (buildah resolves copy sources against it).
        out_dir: The output directory, absolute.
        source_date_epoch: Every timestamp of the artifacts.
        sign_key: The key selector to sign with, if any is set.
        gnupghome: The keyring to sign with ($GNUPGHOME), if set.
        passphrase: The signing key's passphrase ($DUALBUILD_SIGN_PASSPHRASE), if set.
        isolation: How run steps are isolated, if chosen (else probed).
        cache_dir: Where the step index, bootstrap bases and probe results are kept.
        secrets: Where each secret the run steps read comes from (--secret, else the recipe).
    """

    context: Path
    out_dir: Path
    source_date_epoch: int
    sign_key: str | None
    gnupghome: Path | None
    passphrase: str | None
    isolation: str | None
    cache_dir: Path
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Never show the passphrase, not even in a debug dump.
        return f"Settings(context={self.context!r}, out_dir={self.out_dir!r})"


def resolve(recipe: Recipe, overrides: Overrides, environ: Mapping[str, str]) -> Settings:
    """Every setting of a build of ``recipe``.

    Raises:
        RecipeError: $SOURCE_DATE_EPOCH is not a non-negative integer; two steps name one
            secret with different sources.
    """
    recipe_dir = recipe.path.parent
    out_dir = overrides.out_dir if overrides.out_dir is not None else recipe_dir / recipe.output.dir
    context = (overrides.context if overrides.context is not None else recipe_dir).absolute()
    return Settings(
        context=context,
        out_dir=out_dir.absolute(),
        source_date_epoch=_source_date_epoch(recipe, environ),
        sign_key=overrides.sign_key or environ.get(SIGN_KEY_ENV) or recipe.sign.key,
        gnupghome=keyring_home(environ),
        passphrase=environ.get(PASSPHRASE_ENV),
        isolation=overrides.isolation or environ.get(ISOLATION_ENV) or None,
        cache_dir=cache_dir(environ),
        secrets=_secrets(recipe, context, overrides.secrets),
    )


def _secrets(recipe: Recipe, context: Path, given: Sequence[SecretSource]) -> dict[str, SecretSource]:
    """Each secret id the run steps name, with its source: --secret first, then the recipe."""
    sources: dict[str, SecretSource] = {}
    problems = []
    for stage in recipe.stages:
        for step in stage.steps:
            for secret in step.secrets if isinstance(step, RunStep) else ():
                source = SecretSource(
                    id=secret.id, file=context / secret.src if secret.src is not None else None,
                    env=secret.env, named=str(recipe.path), key=secret.key, line=secret.line,
                )  # fmt: skip
                earlier = sources.setdefault(secret.id, source)
                if (earlier.file, earlier.env) != (source.file, source.env):
                    problems.append(
                        source.problem(
                            f"secret {secret.id!r} comes from elsewhere in {earlier.key}",
                            "one id, one secret: give both steps the same src or env, or another id",
                        )
                    )
    if problems:
        raise RecipeError(problems)
    return {**sources, **{source.id: source for source in given}}


def cache_dir(environ: Mapping[str, str]) -> Path:
    """Where dualbuild keeps bootstrap bases and probe results ($XDG_CACHE_HOME honoured)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "dualbuild"


def keyring_home(environ: Mapping[str, str]) -> Path | None:
    """The keyring gpg uses ($GNUPGHOME), if set."""
    home = environ.get("GNUPGHOME")
    return Path(home) if home else None


def _source_date_epoch(recipe: Recipe, environ: Mapping[str, str]) -> int:
    if recipe.output.source_date_epoch is not None:
        return recipe.output.source_date_epoch
    text = environ.get(SOURCE_DATE_EPOCH_ENV, "").strip()
    if not text:
        return DEFAULT_SOURCE_DATE_EPOCH
    # Length first: int() refuses strings of over 4300 digits.
    if not (text.isascii() and text.isdigit() and len(text) <= 12 and int(text) <= MAX_SOURCE_DATE_EPOCH):
        raise RecipeError(
            [
                Problem(
                    file="$SOURCE_DATE_EPOCH",
                    key="",
                    message=f"{text[:40]!r} is not an integer from 0 to {MAX_SOURCE_DATE_EPOCH}",
                    hint="unset it, or set output.source_date_epoch in the recipe",
                )
            ]
        )
    return int(text)


@dataclass(frozen=True, kw_only=True)
class PublishTargets:
    """Where ``dualbuild publish`` sends a build; None where neither option nor recipe says."""

    docker: str | None
    aci: str | None
    aci_url: str


def publish_targets(
    recipe: Recipe, *, docker: str | None, aci: str | None, aci_url: str | None
) -> PublishTargets:
    """--docker / --aci / --aci-url, else the recipe's [publish]; the site URL defaults to the name's host.

    A directory in [publish].aci is relative to the recipe, like output.dir; URLs stay as they are.
    """
    recipe_aci = recipe.publish.aci
    if recipe_aci is not None and not recipe_aci.startswith(("http://", "https://")):
        recipe_aci = str(recipe.path.parent / recipe_aci)
    url = aci_url or recipe.publish.aci_url or f"https://{recipe.image.name.split('/')[0]}"
    return PublishTargets(
        docker=docker or recipe.publish.docker, aci=aci or recipe_aci, aci_url=url.rstrip("/")
    )
