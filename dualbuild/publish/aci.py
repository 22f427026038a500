"""The ACI side of publish: an appc discovery site (appc.md §3–4), in a directory or over HTTP PUT.

For image ``example.com/app`` version ``1.0.0`` (linux, amd64) the site gets::

    images/example.com/app-1.0.0-linux-amd64.aci      ← {name}-{version}-{os}-{arch}.{ext}
    images/example.com/app-1.0.0-linux-amd64.aci.asc
    pubkeys/<FINGERPRINT>.asc                          ← the armored public key, one per file
    app/index.html                                     ← the discovery page at the name's path

The page's ``ac-discovery`` and ``ac-discovery-pubkeys`` meta tags point at the site's public
root (aci_url). Files are written first and the page last, so the page never points at a file
that is not there yet; a failure undoes what this run wrote, page first.
"""

from __future__ import annotations

import html
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from dualbuild import gpg, run
from dualbuild.errors import Interrupted, PublishError, SigningError, UsageError
from dualbuild.log import log
from dualbuild.publish.flow import (
    AciPublished,
    BuiltArtifacts,
    PublishRequest,
    SidePublishError,
    file_sha256,
    short_reason,
)
from dualbuild.publish.site import (
    HttpStatusError,
    Site,
    open_site,
)
from dualbuild.recipe.rules import HTTP_URL
from dualbuild.sign.keys import ALGORITHMS, RKT_ALGORITHMS

META_NAMES = ("ac-discovery", "ac-discovery-pubkeys")
NEW_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
{tags}</head>
<body>
<p>{title}: appc image discovery.</p>
</body>
</html>
"""


# --- where things go ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SiteLayout:
    """The site paths and public URLs of one ACI; os and arch are appc names (aarch64, not arm64)."""

    name: str
    version: str
    os: str
    arch: str
    aci_url: str
    fingerprint: str

    @property
    def aci(self) -> str:
        """Site path of the ACI: what the discovery template renders."""
        return f"images/{self.name}-{self.version}-{self.os}-{self.arch}.aci"

    @property
    def signature(self) -> str:
        """Site path of the detached signature."""
        return f"{self.aci}.asc"

    @property
    def public_key(self) -> str:
        """Site path of the armored public key (named by fingerprint: one file per key)."""
        return f"pubkeys/{self.fingerprint}.asc"

    @property
    def page(self) -> str:
        """Site path of the discovery page: the name's path below its host."""
        _, _, below = self.name.partition("/")
        return f"{below}/index.html" if below else "index.html"

    @property
    def discovery_name(self) -> str:
        """What ``actool discover`` / ``rkt fetch`` are given to find this ACI."""
        return f"{self.name}:{self.version},os={self.os},arch={self.arch}"

    def url(self, path: str) -> str:
        """The public URL of a site path."""
        return f"{self.aci_url}/{urllib.parse.quote(path)}"

    def meta_tags(self) -> list[tuple[str, str]]:
        """The (name, content) of the two meta tags; the prefix is the image name."""
        template = f"{self.aci_url}/images/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}"
        return [
            ("ac-discovery", f"{self.name} {template}"),
            ("ac-discovery-pubkeys", f"{self.name} {self.url(self.public_key)}"),
        ]


def aci_url_for(name: str, option: str | None, recipe_value: str | None) -> str:
    """The site's public root: --aci-url, else [publish].aci_url, else https:// + the name's host.

    Raises:
        UsageError: not an http(s) URL, or it has a query or fragment.
    """
    url = (option or recipe_value or f"https://{name.split('/')[0]}").rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if not HTTP_URL.fullmatch(url) or parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            f"{url!r} is not a usable ACI site URL",
            hint="an http(s) URL without spaces, query, fragment or credentials, e.g. https://example.com",
        )
    return url


# --- sites -------------------------------------------------------------------------------------


class _MetaTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: set[tuple[str, str]] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        values = {key: value or "" for key, value in attrs}
        name = values.get("name", "").lower()
        if name in META_NAMES:
            # appc splits content at whitespace (discovery/parse.go), so compare it that way.
            self.found.add((name, " ".join(values.get("content", "").split())))


def discovery_page(existing: str | None, layout: SiteLayout) -> str | None:
    """The page with this image's meta tags; None when ``existing`` already has them all.

    An existing page keeps everything it has (content, other tags, other images' tags); the
    missing tags go at the end of its head.
    """
    wanted = layout.meta_tags()
    if existing is None:
        return NEW_PAGE.format(title=html.escape(layout.name), tags=_tags_html(wanted))
    parser = _MetaTags()
    parser.feed(existing)
    parser.close()
    missing = [tag for tag in wanted if tag not in parser.found]
    if not missing:
        return None
    block = _tags_html(missing)
    for pattern, before in ((r"</head\s*>", True), (r"<body\b", True), (r"<html\b[^>]*>", False)):
        match = re.search(pattern, existing, re.IGNORECASE)
        if match:
            at = match.start() if before else match.end()
            head = existing[:at]
            if head and not head.endswith("\n"):
                head += "\n"
            return head + block + existing[at:]
    return block + existing


def _tags_html(tags: list[tuple[str, str]]) -> str:
    return "".join(f'<meta name="{name}" content="{html.escape(content)}">\n' for name, content in tags)


# --- the public key ----------------------------------------------------------------------------


def write_public_key(fingerprint: str, key_file: Path | None, environ: Mapping[str, str], dest: Path) -> None:
    """Write the signing key's public key to ``dest``: armored, that one key only.

    From ``key_file`` when given (publishing without the secret keyring), else exported from
    the keyring ($GNUPGHOME).

    Raises:
        PublishError: the key is not in the keyring or the file.
    """
    gpg_binary = run.find_tool("gpg", "export the public key for the ACI site")
    source = key_file
    with gpg.temporary_home() as home:
        if source is None:
            gnupghome = environ.get("GNUPGHOME")
            exported = run.run(
                [gpg_binary, "--batch", "--armor", "--export", fingerprint],
                env=gpg.gpg_env(Path(gnupghome) if gnupghome else None),
            ).stdout
            if "BEGIN PGP PUBLIC KEY BLOCK" not in exported:
                where = f" ({gnupghome})" if gnupghome else ""
                raise PublishError(
                    f"the signing key {fingerprint} is not in the keyring{where}",
                    hint=f"pass --public-key FILE (made with `gpg --armor --export {fingerprint}`)",
                )
            source = home / "exported.asc"
            source.write_text(exported)
        env = gpg.gpg_env(home)
        imported = run.run(
            [gpg_binary, "--batch", "--quiet", "--import", os.fspath(source)], env=env, check=False
        )
        listing = run.run(
            [gpg_binary, "--batch", "--with-colons", "--list-keys", "--", fingerprint], env=env, check=False
        )
        if imported.returncode != 0 or listing.returncode != 0:
            raise PublishError(
                f"{source} does not hold the signing key {fingerprint}",
                hint=f"export it with `gpg --armor --export {fingerprint}`",
            )
        records = [line.split(":") for line in listing.stdout.splitlines()]
        primary = next(r for r in records if r[0] == "pub")
        algorithm = ALGORITHMS.get(primary[3], f"algorithm {primary[3]}")
        if algorithm not in RKT_ALGORITHMS:
            log.warning("the signing key is %s: rkt verifies only RSA and DSA signatures", algorithm)
        # Re-exported from a keyring holding nothing else: one armored key, as rkt reads only
        # the first key of a file (appc.md §3).
        armored = run.run([gpg_binary, "--batch", "--armor", "--export", fingerprint], env=env).stdout
    dest.write_text(armored)


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
def prepare(built: BuiltArtifacts, dest: str, request: PublishRequest) -> Iterator[AciPlan]:
    """Check the ACI, its signature and key, and the site; yield what is to be written.

    Raises:
        UsageError: the build wrote no ACI, or a destination is invalid.
        PublishError: no signature; the key is missing or does not verify the signature;
            the site holds another ACI under this version (without ``force``); the site
            cannot be read.
    """
    aci, signature, fingerprint = built.aci, built.aci_signature, built.signing_key
    if aci is None:
        raise UsageError(
            f"the last build wrote no ACI to publish to {dest}", hint='add "aci" to output.formats'
        )
    if signature is None or fingerprint is None or not signature.is_file():
        raise PublishError(
            f"{aci.name} has no signature; an unsigned ACI is not published",
            hint="rebuild with a signing key (--sign-key or [sign].key)",
        )
    image = built.recipe.image
    layout = SiteLayout(
        name=image.name, version=image.version, os=image.os, arch=image.arch.appc,
        aci_url=aci_url_for(image.name, request.aci_url, built.recipe.publish.aci_url),
        fingerprint=fingerprint,
    )  # fmt: skip
    site = open_site(dest, request)
    with tempfile.TemporaryDirectory(prefix="dualbuild-aci-") as scratch:
        work = Path(scratch)
        key = work / "public-key.asc"
        write_public_key(fingerprint, request.public_key, request.environ, key)
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


def apply(plan: AciPlan) -> AciPublished:
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
    return AciPublished(
        site=site.location, aci_url=layout.aci_url, discovery_name=layout.discovery_name,
        aci=layout.url(layout.aci), signature=layout.url(layout.signature),
        public_key=layout.url(layout.public_key), page=layout.page, signing_key=layout.fingerprint,
        written=tuple(u.path for u in plan.uploads),
    )  # fmt: skip


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
