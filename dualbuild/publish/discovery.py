"""Where an ACI goes on an appc discovery site (appc.md §3–4), and the page that points at it.

For image ``example.com/app`` version ``1.0.0`` (linux, amd64) the site gets::

    images/example.com/app-1.0.0-linux-amd64.aci      ← {name}-{version}-{os}-{arch}.{ext}
    images/example.com/app-1.0.0-linux-amd64.aci.asc
    images/example.com/app-latest-linux-amd64.aci      ← one pair per tag of [image].tags and for
    images/example.com/app-latest-linux-amd64.aci.asc    latest: what the template renders for app:TAG
    pubkeys/<FINGERPRINT>.asc                          ← the armored public key, one per file
    app/index.html                                     ← the discovery page at the name's path

The page's ``ac-discovery`` and ``ac-discovery-pubkeys`` meta tags point at the site's public
root (aci_url). A client asking for a bare name asks for version ``latest`` (appc discovery's
default), so ``latest`` is always published, pointing at the newest publish.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser

from dualbuild.errors import UsageError
from dualbuild.recipe.rules import HTTP_URL

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


@dataclass(frozen=True, kw_only=True)
class SiteLayout:
    """The site paths and public URLs of one ACI; os and arch are appc names (aarch64, not arm64)."""

    name: str
    version: str
    os: str
    arch: str
    aci_url: str
    fingerprint: str
    tags: tuple[str, ...] = ()

    @property
    def aci(self) -> str:
        """Site path of the ACI: what the discovery template renders."""
        return self.aci_of(self.version)

    @property
    def signature(self) -> str:
        """Site path of the detached signature."""
        return f"{self.aci}.asc"

    def aci_of(self, version: str) -> str:
        """Site path of the ACI discovered as ``version`` (the version itself or a tag)."""
        return f"images/{self.name}-{version}-{self.os}-{self.arch}.aci"

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


def check_site_url(url: str) -> str:
    """The site's public root, checked: an http(s) URL without query, fragment or credentials.

    Raises:
        UsageError: it is not one.
    """
    parts = urllib.parse.urlsplit(url)
    if not HTTP_URL.fullmatch(url) or parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(
            f"{url!r} is not a usable ACI site URL",
            hint="an http(s) URL without spaces, query, fragment or credentials, e.g. https://example.com",
        )
    return url


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
