"""The Docker side of publish: skopeo pushes the image tarball under its version and every tag.

The version is pushed from the tarball; each tag is then copied from ``REPO@DIGEST`` with
``--preserve-digests``, so every tag names the very same manifest. Each reference is read back
and checked: its manifest digest is the pushed one and its config digest is the local image id.

An image is identified by its config digest: it fixes the layers' diff_ids, so equal configs mean
equal images however the registry compressed the layers. Credentials are left to skopeo
(--authfile, REGISTRY_AUTH_FILE, containers auth.json, ~/.docker/config.json); dualbuild never
reads them, so it cannot print them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dualbuild import run
from dualbuild.errors import CommandError, UsageError
from dualbuild.files import scratch_directory
from dualbuild.log import log
from dualbuild.publish.retry import short_reason, with_retries
from dualbuild.publish.types import Build, DockerPushed, PublishRequest, SidePublishError
from dualbuild.recipe.model import Format
from dualbuild.recipe.rules import REGISTRY_REFERENCE
from dualbuild.report import PublishedImage

# containers/image messages for a tag or repository the registry does not have.
_ABSENT = re.compile(r"manifest unknown|name unknown|MANIFEST_UNKNOWN|NAME_UNKNOWN", re.IGNORECASE)
# Failures worth another try: server errors and broken connections (as containers/image words them).
_TRANSIENT = re.compile(
    r"(?:status|code)\D{0,20}\b(?:429|500|502|503|504)\b|Service Unavailable|Bad Gateway|Gateway Time"
    r"|Internal Server Error|Too Many Requests|connection reset|connection refused|broken pipe"
    r"|unexpected EOF|: EOF\b|i/o timeout|TLS handshake timeout|server misbehaving"
    r"|context deadline exceeded|Client\.Timeout",
    re.IGNORECASE,
)


@dataclass(frozen=True, kw_only=True)
class DockerPlan:
    """What the push will do, decided after reading the registry.

    Attributes:
        existing: The manifest digest the version already has, when it is our image.
        replaces: The config digest of another image under the version (only with force).
    """

    repository: str
    archive: Path
    image_id: str
    version: str
    tags: tuple[str, ...]
    request: PublishRequest
    existing: str | None
    replaces: str | None

    def actions(self) -> list[str]:
        """What will happen, one line each (for --dry-run)."""
        if self.existing is not None:
            first = f"keep {self.repository}:{self.version} (already {self.existing})"
        elif self.replaces is not None:
            first = f"replace {self.repository}:{self.version} (held config {self.replaces}; --force)"
        else:
            first = f"push {self.archive.name} to {self.repository}:{self.version}"
        return [first, *(f"tag {self.repository}:{tag}" for tag in self.tags)]


def prepare(build: Build, repository: str, request: PublishRequest) -> DockerPlan:
    """Check the registry before anything is pushed.

    Raises:
        UsageError: the repository is not a valid reference, or the build wrote no Docker image.
        SidePublishError: the registry cannot be read, or the version holds another image
            and ``force`` is not set.
    """
    if not REGISTRY_REFERENCE.fullmatch(repository) or _has_tag(repository):
        raise UsageError(
            f"{repository!r} is not a repository reference",
            hint="e.g. registry.example.com/team/hello (no tag: version and tags come from [image])",
        )
    artifact = build.report.artifact(Format.DOCKER)
    if build.files.docker is None or artifact is None:
        raise UsageError(
            f"the last build wrote no Docker image to push to {repository}",
            hint='add "docker" to output.formats and rebuild',
        )
    run.find_tool("skopeo", "push the image to a registry")
    image = build.recipe.image
    plan = DockerPlan(
        repository=repository, archive=build.files.docker, image_id=artifact.image_id,
        version=image.version, tags=tuple(t for t in image.tags if t != image.version), request=request,
        existing=None, replaces=None,
    )  # fmt: skip
    try:
        current = _manifest(plan, f"{repository}:{image.version}")
    except CommandError as error:
        raise SidePublishError(
            f"cannot read {repository}:{image.version} from the registry: {short_reason(error)}",
            side="docker",
            not_published=[f"the Docker image ({repository})"],
        ) from None
    if current is None:
        return plan
    digest, config = _identify(current)
    if config == plan.image_id:
        return dataclasses.replace(plan, existing=digest)
    held = config or "a multi-platform index"
    if not request.force:
        raise SidePublishError(
            f"{repository}:{image.version} already holds a different image ({held}; this build is "
            f"{plan.image_id}); a published version is not replaced",
            side="docker",
            not_published=[f"the Docker image ({repository})"],
            hint="bump image.version, or pass --force to replace it",
        )
    log.warning("%s:%s holds %s; replacing it (--force)", repository, image.version, held)
    return dataclasses.replace(plan, replaces=held)


def push(plan: DockerPlan) -> DockerPushed:
    """Push the version, then every tag; read each back and check its digests.

    Raises:
        SidePublishError: a push or check failed; it lists the references already pushed.
    """
    repository = plan.repository
    done: list[str] = []
    written: list[str] = []
    pending = [plan.version, *plan.tags]
    digest = ""
    try:
        if plan.existing is not None:
            digest = plan.existing
            log.info("%s:%s is already this image (%s)", repository, plan.version, digest)
        else:
            digest = _push_archive(plan)
            written.append(plan.version)
        _check(plan, f"{repository}:{plan.version}", digest)
        done.append(plan.version)
        pending.remove(plan.version)
        for tag in plan.tags:
            current = _manifest(plan, f"{repository}:{tag}")
            if current is None or _identify(current)[0] != digest:
                _skopeo(
                    plan, f"tagging {repository}:{tag}", "copy", "--quiet", "--preserve-digests",
                    *_tls("--src-tls-verify", plan), *_tls("--dest-tls-verify", plan),
                    f"docker://{repository}@{digest}", f"docker://{repository}:{tag}",
                )  # fmt: skip
                _check(plan, f"{repository}:{tag}", digest)
                written.append(tag)
            done.append(tag)
            pending.remove(tag)
    except (CommandError, _Mismatch) as error:
        reference = f" ({repository}@{digest})" if done else ""
        raise SidePublishError(
            f"pushing to {repository} failed: {short_reason(error)}",
            side="docker",
            published=[f"{repository}:{', '.join(done)}{reference}"] if done else [],
            not_published=[f"{repository}:{tag}" for tag in pending],
        ) from None
    if written:
        log.info("pushed %s as %s", f"{repository}@{digest}", ", ".join(written))
    else:
        log.info("%s: every tag already names %s; nothing pushed", repository, digest)
    record = PublishedImage(
        repository=repository, digest=digest, config_digest=plan.image_id, tags=(plan.version, *plan.tags)
    )
    return DockerPushed(record=record, written=tuple(written))


class _Mismatch(Exception):
    """A reference read back is not what was pushed."""


def _push_archive(plan: DockerPlan) -> str:
    with scratch_directory("push") as scratch:
        digest_file = scratch / "digest"
        _skopeo(
            plan, f"pushing {plan.archive.name}", "copy", "--quiet", "--digestfile", os.fspath(digest_file),
            *_tls("--dest-tls-verify", plan), f"docker-archive:{plan.archive}",
            f"docker://{plan.repository}:{plan.version}",
        )  # fmt: skip
        return digest_file.read_text().strip()


def _check(plan: DockerPlan, reference: str, digest: str) -> None:
    raw = _manifest(plan, reference)
    if raw is None:
        raise _Mismatch(f"{reference} is missing right after the push")
    found, config = _identify(raw)
    if found != digest:
        raise _Mismatch(f"{reference} names {found}, not the pushed {digest}")
    if config != plan.image_id:
        raise _Mismatch(f"{reference} has config {config}, not the local image id {plan.image_id}")


def _manifest(plan: DockerPlan, reference: str) -> bytes | None:
    """The raw manifest under ``reference``, or None when the registry does not have it."""
    try:
        text = _skopeo(
            plan,
            f"reading {reference}",
            "inspect",
            "--raw",
            *_tls("--tls-verify", plan),
            f"docker://{reference}",
        )
    except CommandError as error:
        if _ABSENT.search(error.output_tail):
            return None
        raise
    # skopeo prints the manifest bytes as they are (JSON, UTF-8): they hash to its digest.
    return text.encode()


def _identify(raw: bytes) -> tuple[str, str | None]:
    """The manifest's digest and its config digest (None for an index: no single config)."""
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    try:
        config = json.loads(raw).get("config", {}).get("digest")
    except (ValueError, AttributeError):
        config = None
    return digest, config if isinstance(config, str) else None


def _skopeo(plan: DockerPlan, what: str, *args: str) -> str:
    skopeo = run.find_tool("skopeo", "push the image to a registry")
    request = plan.request
    auth = ["--authfile", os.fspath(request.authfile)] if request.authfile is not None else []
    # containers/image sets no read timeout of its own: a registry that stops answering would
    # hold the push forever.
    timeout = ["--command-timeout", f"{max(1, round(request.retry.timeout))}s"]
    argv = [skopeo, *timeout, args[0], *auth, *args[1:]]
    result = with_retries(
        what,
        lambda: run.run(argv, env=request.environ),
        policy=request.retry,
        transient=lambda error: (
            isinstance(error, CommandError) and bool(_TRANSIENT.search(error.output_tail))
        ),
    )
    return result.stdout


def _tls(flag: str, plan: DockerPlan) -> list[str]:
    return [] if plan.request.tls_verify else [f"{flag}=false"]


def _has_tag(reference: str) -> bool:
    return ":" in reference.rsplit("/", 1)[-1] or "@" in reference
