"""``dualbuild convert``: an existing image (Docker, OCI or ACI) becomes the same artifact set.

docker2aci's job, and the ACI-to-Docker direction people asked for, done on the publisher's
side: the source becomes the only stage of a recipe with no steps, so its tree and config are
carried over, and the normal build writes, signs and reports.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from dualbuild.archive import read_aci_manifest
from dualbuild.errors import BuildError, UsageError
from dualbuild.pipeline import BuildRequest, build_recipe
from dualbuild.recipe import parse_recipe_document
from dualbuild.recipe.rules import AC_IDENTIFIER, DOCKER_TAG, is_docker_repository
from dualbuild.report import Report

_FILE_PREFIXES = ("docker-archive:", "oci-archive:", "aci:")


@dataclass(frozen=True, kw_only=True)
class ConvertRequest:
    """What `dualbuild convert` was asked to do."""

    source: str
    name: str | None = None
    version: str | None = None
    formats: tuple[str, ...] = ("docker", "aci")
    build: BuildRequest


def convert(request: ConvertRequest) -> Report:
    """Convert ``request.source``; return the build report.

    Raises:
        UsageError: the source cannot be read, or its name/version cannot be told (exit 2).
    """
    base, context = _base(request.source)
    derived_name, derived_version = _identity(base, context)
    name = request.name or derived_name
    version = request.version or derived_version or "latest"
    if name is None:
        raise UsageError(
            f"cannot tell the image name from {request.source!r}", hint="pass --name (and --version)"
        )
    virtual = context / f"convert-{name.rsplit('/', 1)[-1]}.toml"
    document: dict[str, object] = {
        "image": {"name": name, "version": version},
        "stages": [{"name": "source", "from": base}],
        "output": {"formats": list(request.formats)},
    }
    recipe = parse_recipe_document(document, virtual)
    overrides = dataclasses.replace(
        request.build.overrides,
        context=context,
        out_dir=request.build.overrides.out_dir or Path.cwd() / "dist",
    )
    return build_recipe(recipe, dataclasses.replace(request.build, recipe=virtual, overrides=overrides))


def _base(source: str) -> tuple[str, Path]:
    """The ``from`` value and build context for a source given on the command line."""
    prefix = next((p for p in _FILE_PREFIXES if source.startswith(p)), None)
    path = Path(source[len(prefix) :] if prefix else source)
    if prefix is None and not path.is_file():
        return source, Path.cwd()  # a registry reference
    if not path.is_file():
        raise UsageError(f"{source!r}: no such file")
    path = path.absolute()
    kind = prefix.rstrip(":") if prefix else _sniff(path)
    return f"{kind}:{path.name}", path.parent


def _sniff(path: Path) -> str:
    if path.name.endswith(".aci"):
        return "aci"
    try:
        with tarfile.open(path) as archive:
            names = set(archive.getnames())
    except (tarfile.TarError, OSError) as error:
        raise UsageError(f"{path}: not an image archive ({error})") from None
    if "manifest.json" in names:
        return "docker-archive"
    if "oci-layout" in names:
        return "oci-archive"
    if "manifest" in names:
        return "aci"
    raise UsageError(f"{path}: neither a docker-archive, an oci-archive nor an ACI")


def _identity(base: str, context: Path) -> tuple[str | None, str | None]:
    """Name and version the source itself carries, when they are valid for both formats."""
    kind, _, rest = base.partition(":")
    name = version = None
    try:
        if kind == "aci":
            manifest = read_aci_manifest(context / rest)
            name = str(manifest.get("name", ""))
            labels = manifest.get("labels")
            for label in labels if isinstance(labels, list) else []:
                if isinstance(label, dict) and label.get("name") == "version":
                    version = str(label.get("value"))
        elif kind == "docker-archive":
            with tarfile.open(context / rest) as archive:
                member = archive.extractfile("manifest.json")
                entries = json.loads(member.read()) if member else []
            tags = entries[0].get("RepoTags") or [] if entries else []
            if tags:
                name, _, version = str(tags[0]).rpartition(":")
        elif kind not in ("oci-archive",):
            repository, _, tag = (
                base.rpartition(":") if "/" not in base.rpartition(":")[2] else (base, "", "")
            )
            name, version = repository or base, tag or None
    except (
        tarfile.TarError,
        OSError,
        KeyError,
        ValueError,
        AttributeError,
        IndexError,
        RecursionError,
        BuildError,
    ):
        return None, None
    if name is not None and not (AC_IDENTIFIER.fullmatch(name) and is_docker_repository(name)):
        name = None
    if version is not None and not DOCKER_TAG.fullmatch(version):
        version = None
    return name, version
