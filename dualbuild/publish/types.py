"""What the two sides of publish share: the request, the build being published, the outcomes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.errors import PublishError
from dualbuild.plan import ArtifactFiles
from dualbuild.publish.retry import RetryPolicy
from dualbuild.recipe.model import Recipe
from dualbuild.report import PublishedAci, PublishedImage, Report


class SidePublishError(PublishError):
    """One side (registry or ACI site) failed; says what of that side is nonetheless out there.

    Attributes:
        side: "docker" or "aci".
        published: What this side did publish before failing (one line each).
        not_published: What it did not publish.
    """

    def __init__(
        self,
        message: str,
        *,
        side: str,
        published: Sequence[str] = (),
        not_published: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.side = side
        self.published = tuple(published)
        self.not_published = tuple(not_published)


@dataclass(frozen=True, kw_only=True)
class PublishRequest:
    """What `dualbuild publish` was asked to do; None options fall back to [publish]."""

    recipe: Path
    out_dir: Path | None = None
    docker: str | None = None
    aci: str | None = None
    aci_url: str | None = None
    public_key: Path | None = None
    tls_verify: bool = True
    authfile: Path | None = None
    dry_run: bool = False
    force: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True, kw_only=True)
class Build:
    """The last build of a recipe: its report, and its files found next to the report."""

    recipe: Recipe
    report: Report
    files: ArtifactFiles


@dataclass(frozen=True, kw_only=True)
class DockerPushed:
    """The image in the registry, and which of its references this run wrote."""

    record: PublishedImage
    written: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class AciWritten:
    """The ACI on its site, and which of the site's files this run wrote."""

    record: PublishedAci
    written: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class PublishResult:
    """What a publish did (or, with ``dry_run``, would do)."""

    report: Path
    dry_run: bool
    docker: DockerPushed | None = None
    aci: AciWritten | None = None
    actions: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What the CLI prints on stdout."""
        if self.dry_run:
            return [f"would {action}" for action in self.actions] or ["nothing to publish"]
        lines = []
        if self.docker is not None:
            state = "pushed" if self.docker.written else "unchanged"
            image = self.docker.record
            lines.append(f"{image.reference}  ({', '.join(image.tags)}; {state})")
        if self.aci is not None:
            state = "written" if self.aci.written else "unchanged"
            aci = self.aci.record
            lines.append(f"{aci.aci}  ({state})")
            lines.append(f"  signature {aci.signature}")
            lines.append(f"  key {aci.public_key}")
            lines.append(f"  discovery {aci.discovery_name}")
            if len(aci.tags) > 1:
                lines.append(f"  also as {', '.join(aci.tags[1:])}")
        return lines
