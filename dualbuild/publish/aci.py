"""The ACI side of publish: the discovery site's files planned, written, and rolled back.

Everything is checked first (the signature verifies with the published key; nothing different
is replaced under this version without ``force``). Files are written first and the page last,
so the page never points at a file that is not there yet; a failure undoes what this run wrote,
page first.
"""

from __future__ import annotations

import http.client
import tempfile
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dualbuild import gpg, run
from dualbuild.errors import Interrupted, PublishError, SigningError, UsageError
from dualbuild.files import file_sha256
from dualbuild.log import log
from dualbuild.publish.discovery import SiteLayout, check_site_url, discovery_page
from dualbuild.publish.retry import short_reason
from dualbuild.publish.site import HttpStatusError, Site, open_site
from dualbuild.publish.types import AciWritten, Build, PublishRequest, SidePublishError
from dualbuild.report import PublishedAci
from dualbuild.settings import keyring_home
from dualbuild.sign.keys import RKT_ALGORITHMS, export_public_key

# --- plan, apply, roll back --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One file to write; ``previous`` holds what the site had there (None: nothing)."""

    path: str
    source: Path
    content_type: str
    previous: Path | None


@dataclass(frozen=True, kw_only=True)
class AciPlan:
    """What the site gets, in write order (the page last); ``kept`` is already right."""

    site: Site
    layout: SiteLayout
    uploads: tuple[Upload, ...]
    kept: tuple[str, ...]

    def actions(self) -> list[str]:
        """What will happen, one line each (for --dry-run)."""
        lines = [
            f"{'add' if u.previous is None else 'replace'} {_join(self.site.location, u.path)}"
            for u in self.uploads
        ]
        return lines + [f"keep {_join(self.site.location, path)}" for path in self.kept]


def _join(location: str, path: str) -> str:
    return location.rstrip("/") + "/" + path


@contextmanager
def prepare(build: Build, dest: str, aci_url: str, request: PublishRequest) -> Iterator[AciPlan]:
    """Check the ACI, its signature and key, and the site; yield what is to be written.

    Raises:
        UsageError: the build wrote no ACI, or a destination is invalid.
        PublishError: no signature; the key is missing or does not verify the signature;
            the site holds another ACI under this version (without ``force``); the site
            cannot be read.
    """
    aci, signature = build.files.aci, build.files.aci_signature
    fingerprint = build.report.signature.signing_key if build.report.signature is not None else None
    if aci is None:
        raise UsageError(
            f"the last build wrote no ACI to publish to {dest}", hint='add "aci" to output.formats'
        )
    if signature is None or fingerprint is None or not signature.is_file():
        raise PublishError(
            f"{aci.name} has no signature; an unsigned ACI is not published",
            hint="rebuild with a signing key (--sign-key or [sign].key)",
        )
    image = build.recipe.image
    layout = SiteLayout(
        name=image.name, version=image.version, os=image.os, arch=image.arch.appc,
        aci_url=check_site_url(aci_url), fingerprint=fingerprint,
    )  # fmt: skip
    site = open_site(dest, environ=request.environ, tls_verify=request.tls_verify, retry=request.retry)
    with tempfile.TemporaryDirectory(prefix="dualbuild-aci-") as scratch:
        work = Path(scratch)
        key = work / "public-key.asc"
        try:
            algorithm = export_public_key(
                fingerprint, key, gnupghome=keyring_home(request.environ), key_file=request.public_key
            )
        except SigningError as error:
            raise PublishError(error.message, hint=error.hint) from None
        if algorithm not in RKT_ALGORITHMS:
            log.warning("the signing key is %s: rkt verifies only RSA and DSA signatures", algorithm)
        try:
            gpg.verify_detached(aci, signature, key)
        except SigningError as error:
            raise PublishError(
                f"the signature {signature.name} does not verify with the public key {fingerprint}: "
                "publishing it would give users an ACI they cannot verify",
                hint=str(error).splitlines()[0],
            ) from None
        uploads: list[Upload] = []
        kept: list[str] = []
        try:
            files = (
                (layout.public_key, key, "application/pgp-keys"),
                (layout.aci, aci, "application/octet-stream"),
                (layout.signature, signature, "application/pgp-signature"),
            )
            for index, (path, source, content_type) in enumerate(files):
                previous = work / f"previous-{index}"
                if not site.fetch(path, previous):
                    uploads.append(Upload(path=path, source=source, content_type=content_type, previous=None))
                elif file_sha256(previous) == file_sha256(source):
                    kept.append(path)
                else:
                    if path == layout.aci and not request.force:
                        raise SidePublishError(
                            f"{_join(site.location, path)} already holds a different ACI; a published "
                            "version is not replaced",
                            side="aci",
                            not_published=[f"the ACI {layout.discovery_name}"],
                            hint="bump image.version, or pass --force to replace it",
                        )
                    log.warning("replacing %s (it differs)", _join(site.location, path))
                    uploads.append(
                        Upload(path=path, source=source, content_type=content_type, previous=previous)
                    )
            page_upload = _page_upload(site, layout, work)
        except (OSError, HttpStatusError, http.client.HTTPException) as error:
            raise SidePublishError(
                f"cannot read the ACI site {site.location}: {short_reason(error)}",
                side="aci",
                not_published=[f"the ACI {layout.discovery_name}"],
            ) from None
        if page_upload is None:
            kept.append(layout.page)
        else:
            uploads.append(page_upload)
        yield AciPlan(site=site, layout=layout, uploads=tuple(uploads), kept=tuple(kept))


def _page_upload(site: Site, layout: SiteLayout, work: Path) -> Upload | None:
    previous = work / "previous-page"
    existing = None
    if site.fetch(layout.page, previous):
        # surrogateescape: bytes that are not UTF-8 go back out exactly as they came.
        existing = previous.read_bytes().decode("utf-8", "surrogateescape")
    page = discovery_page(existing, layout)
    if page is None:
        return None
    new = work / "page.html"
    new.write_bytes(page.encode("utf-8", "surrogateescape"))
    return Upload(
        path=layout.page, source=new, content_type="text/html; charset=utf-8",
        previous=previous if existing is not None else None,
    )  # fmt: skip


def apply(plan: AciPlan) -> AciWritten:
    """Write the plan's files, page last; on failure undo what this run wrote.

    Raises:
        SidePublishError: a write failed; it says what the rollback removed or left.
        Interrupted: after the rollback.
    """
    site, layout = plan.site, plan.layout
    attempted: list[Upload] = []
    try:
        for upload in plan.uploads:
            # Counted before the write: a failed PUT may still have landed on the server.
            attempted.append(upload)
            site.put(upload.path, upload.source, upload.content_type)
            log.info("wrote %s", _join(site.location, upload.path))
    except Interrupted:
        with run.deferred_interrupts():
            _rollback(site, attempted, layout.page)
        raise
    except Exception as error:  # noqa: BLE001 - any failure must roll the site back
        failed = attempted[-1].path
        if not _may_have_landed(error):
            # The server answered with an error, or a local rename failed: nothing to undo there.
            attempted.pop()
        with run.deferred_interrupts():
            undone, left = _rollback(site, attempted, layout.page)
        state = ", ".join(undone) if undone else "nothing had been written"
        raise SidePublishError(
            f"writing {failed} to {site.location} failed: {short_reason(error)}",
            side="aci",
            published=[f"left on the ACI site: {', '.join(left)}"] if left else [],
            not_published=[f"the ACI {layout.discovery_name} (site rolled back; {state})"],
        ) from None
    if not plan.uploads:
        log.info("the ACI site already has %s; nothing written", layout.discovery_name)
    record = PublishedAci(
        site=site.location, aci_url=layout.aci_url, discovery_name=layout.discovery_name,
        aci=layout.url(layout.aci), signature=layout.url(layout.signature),
        public_key=layout.url(layout.public_key), page=layout.page, signing_key=layout.fingerprint,
    )  # fmt: skip
    return AciWritten(record=record, written=tuple(u.path for u in plan.uploads))


def _may_have_landed(error: Exception) -> bool:
    # A connection lost after the body went out leaves the server's state unknown.
    return isinstance(
        error, urllib.error.URLError | ConnectionError | TimeoutError | http.client.HTTPException
    )


def _rollback(site: Site, attempted: list[Upload], page: str) -> tuple[list[str], list[str]]:
    """Undo the writes, newest (the page) first; return what was undone and what is left."""
    undone: list[str] = []
    left: list[str] = []
    for position in range(len(attempted) - 1, -1, -1):
        upload = attempted[position]
        try:
            if upload.previous is None:
                site.delete(upload.path)
                done = f"removed {upload.path}"
            else:
                site.put(upload.path, upload.previous, upload.content_type)
                done = f"restored {upload.path}"
        except Exception as error:  # noqa: BLE001 - reported, and the other undos still run
            left.append(f"{upload.path} (could not be undone: {short_reason(error)})")
            if upload.path == page:
                # The page may now point at the files: they stay, or it would point at nothing.
                left += [u.path for u in attempted[:position]]
                break
            continue
        undone.append(done)
    site.prune()
    return undone, left
