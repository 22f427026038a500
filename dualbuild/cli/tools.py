"""The commands that look after what a build keeps: the step cache and signing keys."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import click

from dualbuild import settings
from dualbuild.builder.cache import cached, prune
from dualbuild.errors import UsageError
from dualbuild.recipe.rules import parse_age_seconds
from dualbuild.sign.keys import create_key, export_public_key


@click.group()
def cache() -> None:
    """Inspect and prune the step cache.

    The cache holds buildah images named localhost/dualbuild-cache, Debian bootstrap tarballs
    and the run steps' cache folders (cache = [...]) under the cache folder (~/.cache/dualbuild).
    """


@cache.command("ls")
def cache_ls() -> None:
    """List cached trees, oldest first."""
    for entry in cached(settings.cache_dir(os.environ)):
        when = datetime.datetime.fromtimestamp(entry.created, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{entry.key[:16]}  {entry.image_id[:12]}  {when}  {entry.size}")


@cache.command("prune")
@click.option("--older-than", metavar="AGE", help="Only entries older than AGE (e.g. 7d, 12h, 1w).")
def cache_prune(older_than: str | None) -> None:
    """Remove cached trees (all of them, or those older than --older-than)."""
    seconds = None if older_than is None else parse_age_seconds(older_than)
    if older_than is not None and seconds is None:
        raise UsageError(f"--older-than {older_than!r} is not an age", hint="e.g. 30m, 12h, 7d, 2w")
    removed = prune(settings.cache_dir(os.environ), older_than=seconds)
    folders = sum(1 for entry in removed if entry.directory is not None)
    trees = len(removed) - folders
    click.echo(
        f"removed {trees} cached tree{'s' if trees != 1 else ''}"
        + (f" and {folders} cache folder{'s' if folders != 1 else ''}" if folders else "")
    )


@click.group()
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
    home = settings.keyring_home(os.environ)
    fingerprint = create_key(name, email, comment=comment, gnupghome=home)
    if export is not None:
        export_public_key(fingerprint, export, gnupghome=home)
        click.echo(f"public key written to {export}", err=True)
    click.echo(fingerprint)
    click.echo(f'use it in a recipe:\n[sign]\nkey = "{fingerprint}"', err=True)
