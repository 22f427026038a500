"""The build report: what a build wrote and what was published of it, written and read here only.

``NAME.report.json`` is what release pipelines read (DESIGN.md, "The report"): the recipe and
its sha256, source_date_epoch, and per format the file, its sha256 and size and the image's
identities; the ACI's signature and key; warnings; timings. ``publish`` adds what it published.
Inside dualbuild the report is a frozen :class:`Report`: the build writes one, an unchanged
rebuild and ``publish`` read it back, and nothing passes the JSON around as a dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from dualbuild.builder.stages import StepTiming
from dualbuild.emit.artifact import Artifact
from dualbuild.errors import ReportError
from dualbuild.files import DigestRecord, write_atomically
from dualbuild.recipe.model import Format

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """The image a build made: name, version, tags, platform (``arch`` in Docker's spelling)."""

    name: str
    version: str
    tags: tuple[str, ...]
    os: str
    arch: str


@dataclass(frozen=True, kw_only=True)
class Signature:
    """The ACI's detached signature and the key that made it."""

    file: Path
    signing_key: str


@dataclass(frozen=True, kw_only=True)
class AciLayer:
    """One layer's ACI of an ACI dependency chain (``aci_layers = "dependencies"``), and its signature.

    Attributes:
        file: The ``.aci``; its ``.asc`` beside it when ``signed``.
        version: Its version label (``layer-<diff_id hex>``), what discovery finds it by.
        sha256: Of the file.
        size: Of the file.
        image_id: ``sha512-<hex>`` of the uncompressed tar, as the image ACI pins it.
        signed: Whether its signature was written.
    """

    file: Path
    version: str
    sha256: str
    size: int
    image_id: str
    signed: bool

    @property
    def signature(self) -> Path:
        """The detached signature's path."""
        return self.file.with_name(self.file.name + ".asc")


@dataclass(frozen=True, kw_only=True)
class PublishedImage:
    """The image in a registry: one manifest digest under the version and every tag."""

    repository: str
    digest: str
    config_digest: str
    tags: tuple[str, ...]

    @property
    def reference(self) -> str:
        """``REPO@sha256:…``, the immutable reference."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True, kw_only=True)
class PublishedAci:
    """The ACI on its discovery site (URLs of the ACI, its signature and the key).

    ``tags`` are the versions discovery finds it under: the version, then every tag.
    """

    site: str
    aci_url: str
    discovery_name: str
    aci: str
    signature: str
    public_key: str
    page: str
    signing_key: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Published:
    """What ``dualbuild publish`` put out of this build, side by side."""

    docker: PublishedImage | None = None
    aci: PublishedAci | None = None


@dataclass(frozen=True, kw_only=True)
class Report:
    """One build: its recipe, image, artifacts, signature, and what became of them.

    Attributes:
        dualbuild: The version that made the build.
        recipe: The recipe file; ``recipe_sha256`` its digest (None for a converted image).
        image: Name, version, tags, platform.
        source_date_epoch: Every timestamp of the artifacts.
        artifacts: What each format's emitter wrote, in the order docker, aci, oci.
        signature: The ACI's signature, when it was signed.
        warnings: What the build could not carry or do, one line each.
        timings: Seconds per phase.
        step_timings: Seconds per step, in the order they ran (cached ones: 0).
        build_key: What decides every output byte (an unchanged one means up to date).
        digests: Digests of big files with their stamps (files.known_digests).
        published: What ``publish`` put out.
        aci_layers: The layers' ACIs the image ACI depends on, bottom to top (none: it holds the tree).
    """

    dualbuild: str
    recipe: Path
    recipe_sha256: str | None
    image: ImageRecord
    source_date_epoch: int
    artifacts: tuple[Artifact, ...]
    signature: Signature | None = None
    warnings: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    step_timings: tuple[StepTiming, ...] = ()
    build_key: str | None = None
    digests: tuple[DigestRecord, ...] = ()
    published: Published = field(default_factory=Published)
    aci_layers: tuple[AciLayer, ...] = ()

    def artifact(self, fmt: Format) -> Artifact | None:
        """The artifact of ``fmt``, if the build wrote one."""
        return next((artifact for artifact in self.artifacts if artifact.format is fmt), None)

    def with_digests(self, digests: tuple[DigestRecord, ...]) -> Report:
        """The same report with another list of remembered digests."""
        return replace(self, digests=digests)


def write_report(path: Path, report: Report) -> None:
    """Write the report as JSON (keys in a fixed order), atomically."""
    write_atomically(path, (json.dumps(report_json(report), indent=2) + "\n").encode())


def report_json(report: Report) -> dict[str, object]:
    """The report as the JSON document users read (``build --json`` prints it)."""
    artifacts: dict[str, object] = {}
    for artifact in report.artifacts:
        entry = _artifact_json(artifact)
        if artifact.format is Format.ACI and report.signature is not None:
            entry["signature"] = str(report.signature.file)
            entry["signing_key"] = report.signature.signing_key
        if artifact.format is Format.ACI and report.aci_layers:
            entry["layers"] = [
                {
                    "file": str(layer.file),
                    "version": layer.version,
                    "sha256": layer.sha256,
                    "size": layer.size,
                    "image_id": layer.image_id,
                    "signature": str(layer.signature) if layer.signed else None,
                }
                for layer in report.aci_layers
            ]
        artifacts[str(artifact.format)] = entry
    image = report.image
    data: dict[str, object] = {
        "dualbuild": report.dualbuild,
        "recipe": {"path": str(report.recipe), "sha256": report.recipe_sha256},
        "image": {
            "name": image.name,
            "version": image.version,
            "tags": list(image.tags),
            "os": image.os,
            "arch": image.arch,
        },
        "source_date_epoch": report.source_date_epoch,
        "artifacts": artifacts,
        "warnings": list(report.warnings),
        "timings": dict(report.timings),
        "step_timings": [
            {
                "stage": t.stage,
                "step": t.step,
                "summary": t.summary,
                "seconds": round(t.seconds, 3),
                "cached": t.cached,
            }
            for t in report.step_timings
        ],
        "build_key": report.build_key,
        "digests": [list(record) for record in report.digests],
    }
    published = _published_json(report.published)
    if published:
        data["published"] = published
    return data


def _artifact_json(artifact: Artifact) -> dict[str, object]:
    return {
        "format": str(artifact.format),
        "file": str(artifact.path),
        "sha256": artifact.sha256,
        "size": artifact.size,
        "image_id": artifact.image_id,
        "config_digest": artifact.config_digest,
        "manifest_digest": artifact.manifest_digest,
        "diff_ids": list(artifact.diff_ids),
        "layer_digests": list(artifact.layer_digests),
        "warnings": list(artifact.warnings),
    }


def _published_json(published: Published) -> dict[str, object]:
    data: dict[str, object] = {}
    if (docker := published.docker) is not None:
        data["docker"] = {
            "repository": docker.repository, "reference": docker.reference, "digest": docker.digest,
            "config_digest": docker.config_digest, "tags": list(docker.tags),
        }  # fmt: skip
    if (aci := published.aci) is not None:
        data["aci"] = {
            "site": aci.site, "aci_url": aci.aci_url, "discovery_name": aci.discovery_name, "aci": aci.aci,
            "signature": aci.signature, "public_key": aci.public_key, "discovery_page": aci.page,
            "signing_key": aci.signing_key, "tags": list(aci.tags),
        }  # fmt: skip
    return data


# --- reading -----------------------------------------------------------------------------------


def read_report(path: Path) -> Report:
    """Read a report back.

    Raises:
        FileNotFoundError: there is none.
        ReportError: it cannot be read, or is not a dualbuild report.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read the build report {path}: {error}") from None
    try:
        return _report_from(_Fields(data, "report"))
    except _Malformed as error:
        raise ReportError(f"{path} is not a dualbuild report: {error}") from None


class _Malformed(Exception):
    """A value of the report is missing or of the wrong type."""


class _Fields:
    """Typed access to one JSON object of the report; a wrong value raises _Malformed."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise _Malformed(f"{where} is not an object")
        self.data = data
        self.where = where

    def get(self, key: str, kind: type[T]) -> T:
        value = self.data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _Malformed(f"{self.where}.{key} is not a {kind.__name__}")
        return value

    def optional(self, key: str, kind: type[T]) -> T | None:
        return None if self.data.get(key) is None else self.get(key, kind)

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise _Malformed(f"{self.where}.{key} is not a list of strings")
        return tuple(values)

    def table(self, key: str) -> _Fields:
        return _Fields(self.data.get(key), f"{self.where}.{key}")


def _report_from(fields: _Fields) -> Report:
    recipe, image = fields.table("recipe"), fields.table("image")
    artifacts = fields.table("artifacts")
    signature = None
    records = []
    aci_layers: tuple[AciLayer, ...] = ()
    for name in artifacts.data:
        try:
            fmt = Format(name)
        except ValueError:
            raise _Malformed(f"artifacts.{name} is not a format") from None
        entry = artifacts.table(name)
        records.append(_artifact_from(entry, fmt))
        if fmt is Format.ACI:
            aci_layers = _aci_layers_from(entry.data.get("layers"))
        if fmt is Format.ACI and entry.data.get("signature") is not None:
            signature = Signature(
                file=Path(entry.get("signature", str)), signing_key=entry.get("signing_key", str)
            )
    timings = fields.table("timings") if "timings" in fields.data else _Fields({}, "timings")
    return Report(
        dualbuild=fields.get("dualbuild", str),
        recipe=Path(recipe.get("path", str)),
        recipe_sha256=recipe.optional("sha256", str),
        image=ImageRecord(
            name=image.get("name", str),
            version=image.get("version", str),
            tags=image.strings("tags"),
            os=image.get("os", str),
            arch=image.get("arch", str),
        ),
        source_date_epoch=fields.get("source_date_epoch", int),
        artifacts=tuple(records),
        signature=signature,
        warnings=fields.strings("warnings"),
        timings={str(k): float(v) for k, v in timings.data.items() if isinstance(v, int | float)},
        step_timings=_step_timings_from(fields.data.get("step_timings")),
        build_key=fields.optional("build_key", str),
        digests=_digests_from(fields.data.get("digests")),
        published=_published_from(fields.table("published")) if "published" in fields.data else Published(),
        aci_layers=aci_layers,
    )


def _aci_layers_from(value: object) -> tuple[AciLayer, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Malformed("artifacts.aci.layers is not a list")
    layers = []
    for index, item in enumerate(value):
        entry = _Fields(item, f"artifacts.aci.layers[{index}]")
        layers.append(
            AciLayer(
                file=Path(entry.get("file", str)), version=entry.get("version", str),
                sha256=entry.get("sha256", str), size=entry.get("size", int),
                image_id=entry.get("image_id", str), signed=entry.optional("signature", str) is not None,
            )
        )  # fmt: skip
    return tuple(layers)


def _step_timings_from(value: object) -> tuple[StepTiming, ...]:
    if value is None:
        return ()  # a report of an older dualbuild
    if not isinstance(value, list):
        raise _Malformed("step_timings is not a list")
    timings = []
    for index, item in enumerate(value):
        entry = _Fields(item, f"step_timings[{index}]")
        seconds = entry.data.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise _Malformed(f"step_timings[{index}].seconds is not a number")
        timings.append(
            StepTiming(
                stage=entry.get("stage", str), step=entry.get("step", int), summary=entry.get("summary", str),
                seconds=float(seconds), cached=entry.get("cached", bool),
            )
        )  # fmt: skip
    return tuple(timings)


def _artifact_from(entry: _Fields, fmt: Format) -> Artifact:
    return Artifact(
        format=fmt,
        path=Path(entry.get("file", str)),
        sha256=entry.get("sha256", str),
        size=entry.get("size", int),
        image_id=entry.get("image_id", str),
        config_digest=entry.optional("config_digest", str),
        manifest_digest=entry.optional("manifest_digest", str),
        diff_ids=entry.strings("diff_ids"),
        layer_digests=entry.strings("layer_digests"),
        warnings=entry.strings("warnings"),
    )


def _digests_from(value: object) -> tuple[DigestRecord, ...]:
    """The remembered digests; a malformed record only costs hashing that file again."""
    records: list[DigestRecord] = []
    for record in value if isinstance(value, list) else []:
        if (
            isinstance(record, list)
            and len(record) == 7
            and isinstance(record[0], str)
            and all(isinstance(number, int) and not isinstance(number, bool) for number in record[1:6])
            and isinstance(record[6], str)
        ):
            records.append((record[0], record[1], record[2], record[3], record[4], record[5], record[6]))
    return tuple(records)


def _published_from(fields: _Fields) -> Published:
    docker = aci = None
    if fields.data.get("docker") is not None:
        entry = fields.table("docker")
        docker = PublishedImage(
            repository=entry.get("repository", str), digest=entry.get("digest", str),
            config_digest=entry.get("config_digest", str), tags=entry.strings("tags"),
        )  # fmt: skip
    if fields.data.get("aci") is not None:
        entry = fields.table("aci")
        aci = PublishedAci(
            site=entry.get("site", str), aci_url=entry.get("aci_url", str),
            discovery_name=entry.get("discovery_name", str), aci=entry.get("aci", str),
            signature=entry.get("signature", str), public_key=entry.get("public_key", str),
            page=entry.get("discovery_page", str), signing_key=entry.get("signing_key", str),
            tags=entry.strings("tags"),
        )  # fmt: skip
    return Published(docker=docker, aci=aci)
