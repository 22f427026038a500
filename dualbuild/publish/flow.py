"""`dualbuild publish`: the last build's artifacts → a Docker registry and an appc discovery site.

Everything is checked before anything is written: the report belongs to the recipe as it is
now, the files are the ones the report describes, the published public key verifies the ACI's
signature, and nothing already published under this version would be replaced (unless
``force``). Then the image is pushed (``publish_docker``) and the ACI site written, files first
and the discovery page last (``publish_aci``). What was published is added to the report.

The side modules import the shared types below, so this module imports them lazily inside
:func:`publish` (as ``emit`` does) to keep the import graph acyclic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from dualbuild import run
from dualbuild.errors import CommandError, PublishError, UsageError
from dualbuild.log import log
from dualbuild.plan import make_plan
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.model import Format, Recipe

T = TypeVar("T")
# The message of a logrus line, as skopeo prints its fatal error.
_GO_LOG = re.compile(r'level=\w+ msg="(.*)"$')


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often a transient failure (5xx, reset or refused connection) is retried.

    Attributes:
        attempts: Tries in all, the first included.
        first_delay: Seconds before the first retry; each later wait doubles.
        max_delay: Upper bound of one wait.
    """

    attempts: int = 4
    first_delay: float = 1.0
    max_delay: float = 8.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return float(min(self.first_delay * 2 ** (retry - 1), self.max_delay))


def with_retries(
    what: str, action: Callable[[], T], *, policy: RetryPolicy, transient: Callable[[Exception], bool]
) -> T:
    """Run ``action``; retry it with exponential backoff while it fails transiently.

    Raises:
        Exception: whatever the last attempt raised (at once if it is not transient).
    """
    attempt = 1
    while True:
        try:
            return action()
        except Exception as error:
            if attempt >= policy.attempts or not transient(error):
                raise
            wait = policy.delay(attempt)
            log.warning(
                "%s failed (%s); retry %d of %d in %.1fs",
                what, short_reason(error), attempt, policy.attempts - 1, wait,
            )  # fmt: skip
            time.sleep(wait)
            attempt += 1


def short_reason(error: BaseException) -> str:
    """One line saying why something failed: a command's last output line, else the message."""
    if isinstance(error, CommandError):
        # Tools such as skopeo print the cause last: time="…" level=fatal msg="…".
        lines = [line.strip() for line in error.output_tail.splitlines() if line.strip()]
        if lines:
            fatal = _GO_LOG.search(lines[-1])
            reason = fatal.group(1).replace('\\"', '"') if fatal else lines[-1]
            # skopeo inspect blames every failure on the name; the cause follows.
            return re.sub(r'^Error parsing image name "[^"]*": ', "", reason)
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


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
class BuiltArtifacts:
    """The last build of a recipe, as its report describes it (files resolved next to it)."""

    recipe: Recipe
    report_path: Path
    report: dict[str, object]
    docker: Path | None
    docker_image_id: str | None
    aci: Path | None
    aci_signature: Path | None
    signing_key: str | None


@dataclass(frozen=True, kw_only=True)
class DockerPublished:
    """The image in the registry: one manifest digest under the version and every tag."""

    repository: str
    digest: str
    config_digest: str
    tags: tuple[str, ...]
    written: tuple[str, ...]

    @property
    def reference(self) -> str:
        """``REPO@sha256:…``, the immutable reference."""
        return f"{self.repository}@{self.digest}"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready mapping for the report."""
        return {
            "repository": self.repository,
            "reference": self.reference,
            "digest": self.digest,
            "config_digest": self.config_digest,
            "tags": list(self.tags),
        }


@dataclass(frozen=True, kw_only=True)
class AciPublished:
    """The ACI on its discovery site."""

    site: str
    aci_url: str
    discovery_name: str
    aci: str
    signature: str
    public_key: str
    page: str
    signing_key: str
    written: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready mapping for the report."""
        return {
            "site": self.site,
            "aci_url": self.aci_url,
            "discovery_name": self.discovery_name,
            "aci": self.aci,
            "signature": self.signature,
            "public_key": self.public_key,
            "discovery_page": self.page,
            "signing_key": self.signing_key,
        }


@dataclass(frozen=True, kw_only=True)
class PublishResult:
    """What a publish did (or, with ``dry_run``, would do)."""

    report: Path
    dry_run: bool
    docker: DockerPublished | None = None
    aci: AciPublished | None = None
    actions: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What the CLI prints on stdout."""
        if self.dry_run:
            return [f"would {action}" for action in self.actions] or ["nothing to publish"]
        lines = []
        if self.docker is not None:
            state = "pushed" if self.docker.written else "unchanged"
            lines.append(f"{self.docker.reference}  ({', '.join(self.docker.tags)}; {state})")
        if self.aci is not None:
            state = "written" if self.aci.written else "unchanged"
            lines.append(f"{self.aci.aci}  ({state})")
            lines.append(f"  signature {self.aci.signature}")
            lines.append(f"  key {self.aci.public_key}")
            lines.append(f"  discovery {self.aci.discovery_name}")
        return lines


def publish(request: PublishRequest) -> PublishResult:
    """Publish the artifacts of the recipe's last build.

    Raises:
        UsageError: nothing to publish to, or an option is invalid (exit 2).
        PublishError: no build, a stale build, no usable public key, a signature that does
            not verify, a refused overwrite, or a failed push or upload; the message says
            what was and was not published (exit 5).
        ToolNotFoundError: skopeo or gpg is missing (exit 3).
        Interrupted: SIGINT/SIGTERM, after the ACI site was rolled back (exit 130/143).
    """
    # Lazy: both import this module's shared types.
    from dualbuild.publish import aci as publish_aci
    from dualbuild.publish import docker as publish_docker

    recipe = load_recipe(request.recipe)
    docker_repo = request.docker or recipe.publish.docker
    aci_dest = request.aci or _recipe_relative(recipe, recipe.publish.aci)
    if not docker_repo and not aci_dest:
        raise UsageError(
            "nothing to publish to",
            hint="set docker and/or aci in [publish] of the recipe, or pass --docker / --aci",
        )
    built = load_build(recipe, request)
    docker_done: DockerPublished | None = None
    aci_done: AciPublished | None = None
    try:
        with run.interrupts_as_errors():
            # Both sides check everything (and refuse) before either writes anything.
            docker_plan = publish_docker.prepare(built, docker_repo, request) if docker_repo else None
            aci_context = (
                publish_aci.prepare(built, aci_dest, request) if aci_dest else contextlib.nullcontext()
            )
            with aci_context as aci_plan:
                if request.dry_run:
                    actions = [
                        *(docker_plan.actions() if docker_plan else []),
                        *(aci_plan.actions() if aci_plan else []),
                    ]
                    return PublishResult(report=built.report_path, dry_run=True, actions=tuple(actions))
                if docker_plan is not None:
                    docker_done = publish_docker.push(docker_plan)
                if aci_plan is not None:
                    aci_done = publish_aci.apply(aci_plan)
    except PublishError as error:
        raise _summary(error, docker_done, docker_repo, aci_dest) from error
    finally:
        # Whatever did get out is on record, even when the other side failed.
        _record(built, docker_done, aci_done)
    return PublishResult(report=built.report_path, dry_run=False, docker=docker_done, aci=aci_done)


def _recipe_relative(recipe: Recipe, dest: str | None) -> str | None:
    # A directory in [publish].aci is relative to the recipe, like output.dir; URLs stay as they are.
    if dest is None or dest.startswith(("http://", "https://")):
        return dest
    return str(recipe.path.parent / dest)


def _summary(
    error: PublishError, docker: DockerPublished | None, docker_repo: str | None, aci_dest: str | None
) -> PublishError:
    """The error, followed by what was and was not published."""
    side = error.side if isinstance(error, SidePublishError) else None
    published = list(error.published) if isinstance(error, SidePublishError) else []
    not_published = list(error.not_published) if isinstance(error, SidePublishError) else []
    if docker is not None:
        published.insert(0, f"Docker image {docker.reference} as {', '.join(docker.tags)}")
    elif docker_repo and side != "docker":
        not_published.insert(0, f"the Docker image ({docker_repo}; not pushed)")
    if aci_dest and side != "aci":
        not_published.append(f"the ACI ({aci_dest}; not written)")
    lines = [error.message, "published: " + ("; ".join(published) if published else "nothing")]
    if not_published:
        lines.append("not published: " + "; ".join(not_published))
    return PublishError(
        "\n".join(lines),
        hint=error.hint or "fix the cause and run `dualbuild publish` again; what is already out is skipped",
    )


def load_build(recipe: Recipe, request: PublishRequest) -> BuiltArtifacts:
    """Find the last build of the recipe through its report, and check it is still current.

    Raises:
        PublishError: no report; the recipe changed since the build; an artifact is missing
            or differs from what the report recorded.
    """
    plan = make_plan(recipe, out_dir=request.out_dir, environ=request.environ)
    report_path = plan.artifacts.report
    try:
        report = json.loads(report_path.read_text())
    except FileNotFoundError:
        raise PublishError(
            f"no build of {request.recipe} found: {report_path} does not exist",
            hint=f"run `dualbuild build {request.recipe}` first (or pass --out to its output dir)",
        ) from None
    except (OSError, ValueError) as error:
        raise PublishError(f"cannot read the build report {report_path}: {error}") from None
    if not isinstance(report, dict):
        raise PublishError(f"{report_path} is not a dualbuild report")
    recorded = _get(report, "recipe", "sha256")
    if recorded != file_sha256(recipe.path):
        raise PublishError(
            f"{recipe.path} changed since the build that wrote {report_path.name}",
            hint=f"rebuild first: dualbuild build {request.recipe}",
        )
    docker = _artifact(report, report_path, Format.DOCKER)
    aci = _artifact(report, report_path, Format.ACI)
    signature = _get(report, "artifacts", "aci", "signature")
    signing_key = _get(report, "artifacts", "aci", "signing_key")
    image_id = _get(report, "artifacts", "docker", "image_id")
    return BuiltArtifacts(
        recipe=recipe, report_path=report_path, report=report, docker=docker,
        docker_image_id=image_id if isinstance(image_id, str) else None, aci=aci,
        # Files are found next to the report: the output dir may have been moved or downloaded.
        aci_signature=report_path.parent / Path(signature).name if isinstance(signature, str) else None,
        signing_key=signing_key if isinstance(signing_key, str) else None,
    )  # fmt: skip


def _get(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _artifact(report: dict[str, object], report_path: Path, fmt: Format) -> Path | None:
    name = _get(report, "artifacts", str(fmt), "file")
    if not isinstance(name, str):
        return None
    path = report_path.parent / Path(name).name
    expected = _get(report, "artifacts", str(fmt), "sha256")
    if not path.is_file():
        raise PublishError(f"{path} is missing; the report lists it", hint="rebuild first")
    if expected != file_sha256(path):
        raise PublishError(
            f"{path} is not the file the build wrote (its sha256 differs from the report)",
            hint="rebuild first; never edit artifacts after a build",
        )
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _record(built: BuiltArtifacts, docker: DockerPublished | None, aci: AciPublished | None) -> None:
    if docker is None and aci is None:
        return
    report = dict(built.report)
    earlier = report.get("published")
    published: dict[str, object] = dict(earlier) if isinstance(earlier, dict) else {}
    if docker is not None:
        published["docker"] = docker.to_dict()
    if aci is not None:
        published["aci"] = aci.to_dict()
    report["published"] = published
    partial = built.report_path.with_name(f".{built.report_path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(built.report_path)
    finally:
        partial.unlink(missing_ok=True)
