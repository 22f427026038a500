"""The ACI side of publish: the discovery site's files planned, written, and rolled back.

Everything is checked first (the signature verifies with the published key; nothing different
is replaced under this version without ``force``). Files are written first and the page last,
so the page never points at a file that is not there yet; a failure undoes what this run wrote,
page first.

Every tag of [image].tags is served too, as appc discovery renders it (``name:TAG`` → the files
``…-TAG-os-arch.aci`` and ``.aci.asc``), and ``latest`` always: a bare name is asked for as
that. On a directory site a tag's files are relative symbolic links to the version's, so no
ACI is stored twice and a tag always pairs an ACI with its own signature; over HTTP PUT they
are copies. Tags move to the newest
publish that names them, like Docker tags; a tag the recipe no longer lists stays where it was.
A tag never replaces a published version of the same name (an ACI whose version label is the
tag) without ``force``, and a version replaces what is only a tag there without it.
"""

from __future__ import annotations

import http.client
import posixpath
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dualbuild import gpg, run
from dualbuild.archive import read_aci_manifest
from dualbuild.errors import BuildError, Interrupted, PublishError, SigningError, UsageError
from dualbuild.files import file_sha256, scratch_directory
from dualbuild.log import log
from dualbuild.publish.discovery import SiteLayout, check_site_url, discovery_page
from dualbuild.publish.retry import short_reason
from dualbuild.publish.site import HttpStatusError, Site, open_site
from dualbuild.publish.types import AciWritten, Build, PublishRequest, SidePublishError
from dualbuild.report import PublishedAci
from dualbuild.settings import keyring_home
from dualbuild.sign.keys import RKT_ALGORITHMS, export_public_key

# What appc discovery asks for when a name comes without a version (discovery/discovery.go).
LATEST = "latest"

# --- plan, apply, roll back --------------------------------------------------------------------


KEY_TYPE = "application/pgp-keys"
ACI_TYPE = "application/octet-stream"
SIGNATURE_TYPE = "application/pgp-signature"


@dataclass(frozen=True)
class SiteLink:
    """A symbolic link on the site, as its text (relative to the link's own directory)."""

    text: str


@dataclass(frozen=True, kw_only=True)
class Wanted:
    """A file the site must serve.

    Attributes:
        role: "key", "version" (the version's ACI and signature), "tag", or "layer" (an ACI of
            the version's dependency chain, and its signature).
        version: For an ACI, the version or tag its path is discovered as; None otherwise.
    """

    path: str
    content: Path | SiteLink
    content_type: str
    role: str
    version: str | None = None


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One file to write; ``previous`` holds what the site had there (None: nothing)."""

    path: str
    content: Path | SiteLink
    content_type: str
    previous: Path | SiteLink | None


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
            + (f" (a link to {u.content.text})" if isinstance(u.content, SiteLink) else "")
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
        # A bare name is asked for as "latest" (appc discovery's default): it always resolves,
        # to the newest publish, as the v1.1 contract says.
        tags=tuple(dict.fromkeys(tag for tag in (*image.tags, LATEST) if tag != image.version)),
    )  # fmt: skip
    site = open_site(dest, environ=request.environ, tls_verify=request.tls_verify, retry=request.retry)
    with scratch_directory("aci") as work:
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
        layers = _layer_files(build, aci, key)
        try:
            wanted = wanted_files(layout, key=key, aci=aci, signature=signature, links=site.links)
            # The chain's ACIs before the image ACI that depends on them, each signature before its ACI.
            wanted[1:1] = _wanted_layers(site, layout, layers, work)
            uploads, kept = plan_uploads(site, layout, wanted, work, force=request.force)
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


def _layer_files(build: Build, aci: Path, key: Path) -> list[tuple[str, Path, Path]]:
    """Each ACI of the build's dependency chain (version, ACI, signature), its signature checked.

    Raises:
        PublishError: a layer's ACI or its signature is missing, or the signature does not verify.
    """
    found = []
    for layer in build.report.aci_layers:
        file = aci.parent / layer.file.name
        signature = file.with_name(file.name + ".asc")
        if not layer.signed or not file.is_file() or not signature.is_file():
            raise PublishError(
                f"{file.name}, an ACI the image ACI depends on, is missing or has no signature",
                hint="build again: the chain is published whole or not at all",
            )
        try:
            gpg.verify_detached(file, signature, key)
        except SigningError as error:
            raise PublishError(
                f"the signature of {file.name} does not verify with the public key",
                hint=str(error).splitlines()[0],
            ) from None
        found.append((layer.version, file, signature))
    return found


def _wanted_layers(
    site: Site, layout: SiteLayout, layers: list[tuple[str, Path, Path]], work: Path
) -> list[Wanted]:
    """The chain's files the site lacks: a layer's ACI on the site with these bytes stays, its signature too.

    A layer's ACI is named by its content and pinned by imageID in the images published before:
    one with other bytes under its name is refused (plan_uploads), never replaced unasked.
    """
    wanted: list[Wanted] = []
    for index, (version, file, signature) in enumerate(layers):
        path = layout.aci_of(version)
        held = work / f"layer-{index}"
        if site.fetch(path, held) and file_sha256(held) == file_sha256(file):
            continue
        wanted += [
            Wanted(path=f"{path}.asc", content=signature, content_type=SIGNATURE_TYPE, role="layer"),
            Wanted(path=path, content=file, content_type=ACI_TYPE, role="layer", version=version),
        ]
    return wanted


def wanted_files(layout: SiteLayout, *, key: Path, aci: Path, signature: Path, links: bool) -> list[Wanted]:
    """What the site must serve, in write order: the key, the version's signature and ACI, each tag's.

    With ``links`` a tag's files are relative links to the version's (same directory: the
    discovery template differs only in the version); without, copies of the same bytes (the
    signature is over the bytes, so it verifies under every name).
    """
    # Each signature before its ACI: discovery renders a version's URLs from the template, page
    # or no page, so a publish cut short (SIGKILL) must leave a signature without its ACI (not
    # found: nothing is fetched), never an ACI without its signature.
    files = [
        Wanted(path=layout.public_key, content=key, content_type=KEY_TYPE, role="key"),
        Wanted(path=layout.signature, content=signature, content_type=SIGNATURE_TYPE, role="version"),
        Wanted(path=layout.aci, content=aci, content_type=ACI_TYPE, role="version", version=layout.version),
    ]
    for tag in layout.tags:
        tag_aci = layout.aci_of(tag)
        for path, source, target, content_type, version in (
            (f"{tag_aci}.asc", signature, layout.signature, SIGNATURE_TYPE, None),
            (tag_aci, aci, layout.aci, ACI_TYPE, tag),
        ):
            content: Path | SiteLink = source
            if links:
                content = SiteLink(posixpath.relpath(target, posixpath.dirname(path)))
            files.append(
                Wanted(path=path, content=content, content_type=content_type, role="tag", version=version)
            )
    return files


def plan_uploads(
    site: Site, layout: SiteLayout, wanted: list[Wanted], work: Path, *, force: bool
) -> tuple[list[Upload], list[str]]:
    """Compare each wanted file with what the site has there.

    Returns what to write (each with what it replaces, for a rollback: a link is restored as
    the link) and the paths that are already right.

    Raises:
        SidePublishError: without ``force``, the version's path holds another ACI of this
            version, or a tag's path holds the published version of that name.
        OSError, HttpStatusError, http.client.HTTPException: the site cannot be read.
    """
    uploads: list[Upload] = []
    kept: list[str] = []
    version_was_a_tag = False
    for index, want in enumerate(wanted):
        link = site.readlink(want.path) if site.links else None
        if link is not None and want.content == SiteLink(link):
            kept.append(want.path)
            continue
        previous = work / f"previous-{index}"
        # Through a link: what the site serves there (a dangling link serves nothing).
        found = site.fetch(want.path, previous)
        restore: Path | SiteLink | None = SiteLink(link) if link is not None else previous if found else None
        if found and isinstance(want.content, Path) and file_sha256(previous) == file_sha256(want.content):
            kept.append(want.path)
            continue
        if found:
            version_was_a_tag = _check_replacement(
                want, previous, site=site, layout=layout, link=link, force=force,
                version_was_a_tag=version_was_a_tag,
            )  # fmt: skip
        uploads.append(_upload(want, restore))
    return uploads, kept


def _check_replacement(
    want: Wanted, previous: Path, *, site: Site, layout: SiteLayout, link: str | None, force: bool,
    version_was_a_tag: bool,
) -> bool:  # fmt: skip
    """Say (or refuse) the replacement of ``previous`` by ``want``; True when it was only a tag.

    Raises:
        SidePublishError: the replacement destroys a published version and ``force`` is not set.
    """
    where = _join(site.location, want.path)
    if want.role == "layer" and want.version is not None and not force:
        raise SidePublishError(
            f"{where} holds another ACI of the layer {want.version}, which published images may pin",
            side="aci",
            not_published=[f"the ACI {layout.discovery_name}"],
            hint="pass --force to replace it",
        )
    if want.role == "tag":
        # A link at a tag's path is a tag; a file there may be a version of the same name.
        published = link is None and want.version is not None and _version_label(previous) == want.version
        if published and not force:
            raise SidePublishError(
                f"{where} is the published version {want.version} of {layout.name}; the tag "
                f"{want.version} does not replace it",
                side="aci",
                not_published=[f"the ACI {layout.discovery_name}"],
                hint="remove the tag from image.tags, or pass --force to replace that version",
            )
        log.info("moving %s to version %s", where, layout.version)
        return version_was_a_tag
    if want.role == "version" and want.version is not None:
        held = _version_label(previous)
        if held is not None and held != want.version:
            log.info("%s was a tag of version %s; it becomes version %s", where, held, want.version)
            return True
        if not force:
            raise SidePublishError(
                f"{where} already holds a different ACI; a published version is not replaced",
                side="aci",
                not_published=[f"the ACI {layout.discovery_name}"],
                hint="bump image.version, or pass --force to replace it",
            )
        log.warning("replacing %s (it differs)", where)
        return False
    if not (want.role == "version" and version_was_a_tag):
        # The version's signature after its ACI was a tag's copy: nothing to warn about.
        log.warning("replacing %s (it differs)", where)
    return version_was_a_tag


def _upload(want: Wanted, previous: Path | SiteLink | None) -> Upload:
    return Upload(path=want.path, content=want.content, content_type=want.content_type, previous=previous)


def _version_label(aci: Path) -> str | None:
    """The ``version`` label of an ACI on the site; None when it has none or is no readable ACI."""
    try:
        labels = read_aci_manifest(aci).get("labels")
    except BuildError:
        return None
    for label in labels if isinstance(labels, list) else []:
        if isinstance(label, dict) and label.get("name") == "version" and isinstance(label.get("value"), str):
            return str(label["value"])
    return None


def _write(site: Site, path: str, content: Path | SiteLink, content_type: str) -> None:
    if isinstance(content, SiteLink):
        site.symlink(path, content.text)
    else:
        site.put(path, content, content_type)


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
        path=layout.page, content=new, content_type="text/html; charset=utf-8",
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
            _write(site, upload.path, upload.content, upload.content_type)
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
        tags=(layout.version, *layout.tags),
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
                _write(site, upload.path, upload.previous, upload.content_type)
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
