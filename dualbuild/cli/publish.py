"""`dualbuild publish`: parse the options, build a PublishRequest, call publish()."""

from __future__ import annotations

from pathlib import Path

import click

from dualbuild.cli.options import recipe_argument, registry_options
from dualbuild.publish.flow import publish
from dualbuild.publish.retry import RetryPolicy
from dualbuild.publish.types import PublishRequest
from dualbuild.recipe.rules import parse_age_seconds


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    seconds = parse_age_seconds(value)
    if seconds is None or seconds == 0:
        raise click.BadParameter(f"{value!r} is not a duration such as 90s, 10m or 1h")
    return seconds


@click.command("publish")
@recipe_argument
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory of the build (default: output.dir).",
)
@click.option("--docker", metavar="REPO", help="Registry repository to push to (default: [publish].docker).")
@click.option(
    "--aci",
    metavar="DEST",
    help="ACI discovery site: a directory, or an http(s) URL that takes PUT (default: [publish].aci).",
)
@click.option(
    "--aci-url",
    metavar="URL",
    help="Public root URL of the ACI site (default: [publish].aci_url, else https:// + the name's host).",
)
@click.option(
    "--public-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The signing key's exported public key, for publishing where the keyring ($GNUPGHOME) lacks it.",
)
@registry_options("the registry and ACI site")
@click.option(
    "--dry-run", is_flag=True, help="Check everything and say what would be published; write nothing."
)
@click.option("--force", is_flag=True, help="Replace a different image already published under this version.")
@click.option(
    "--timeout", metavar="DURATION", default="30m", show_default=True, callback=_duration,
    help="How long one registry operation may take before it is retried (e.g. 90s, 10m, 1h).",
)  # fmt: skip
def publish_command(
    recipe: Path, out: Path | None, docker: str | None, aci: str | None, aci_url: str | None,
    public_key: Path | None, tls_verify: bool, authfile: Path | None, dry_run: bool, force: bool,
    timeout: int,
) -> None:  # fmt: skip
    """Publish the last build of RECIPE: the image to a registry, the signed ACI to a discovery site.

    ACI site credentials come from $DUALBUILD_ACI_USER and $DUALBUILD_ACI_PASSWORD, else the
    netrc file ($NETRC or ~/.netrc). Registry credentials are left to skopeo and never shown.
    """
    request = PublishRequest(
        recipe=recipe, out_dir=out, docker=docker, aci=aci, aci_url=aci_url, public_key=public_key,
        tls_verify=tls_verify, authfile=authfile, dry_run=dry_run, force=force,
        retry=RetryPolicy(timeout=timeout),
    )  # fmt: skip
    for line in publish(request).lines():
        click.echo(line)
