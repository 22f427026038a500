"""The parts of publish that need no server: site layout, discovery pages, targets, retries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dualbuild.errors import UsageError
from dualbuild.publish.discovery import SiteLayout, check_site_url, discovery_page
from dualbuild.publish.docker import _TRANSIENT
from dualbuild.publish.retry import RetryPolicy, with_retries
from dualbuild.publish.site import open_site
from dualbuild.recipe import load_recipe
from dualbuild.settings import publish_targets

PASSWORD = "pw-Secret-7f3a9c"
FAST = RetryPolicy(attempts=4, first_delay=0.05, max_delay=0.2)


def layout(name: str = "localhost/hello", arch: str = "aarch64") -> SiteLayout:
    return SiteLayout(
        name=name, version="1.0.0", os="linux", arch=arch, aci_url="http://localhost:8080",
        fingerprint="ABCDEF0123456789ABCDEF0123456789ABCDEF01",
    )  # fmt: skip


def test_site_layout_uses_discovery_names_and_the_names_path() -> None:
    site = layout()
    assert site.aci == "images/localhost/hello-1.0.0-linux-aarch64.aci"
    assert site.signature == "images/localhost/hello-1.0.0-linux-aarch64.aci.asc"
    assert site.page == "hello/index.html"
    assert layout("example.com/team/app").page == "team/app/index.html"
    assert layout("example").page == "index.html"
    assert site.discovery_name == "localhost/hello:1.0.0,os=linux,arch=aarch64"
    # The template, filled in as appc clients do, gives the path the ACI is written to.
    template = dict(site.meta_tags())["ac-discovery"].split(" ", 1)[1]
    filled = template.format(name=site.name, version="1.0.0", os="linux", arch="aarch64", ext="aci")
    assert filled == site.url(site.aci)


def test_new_discovery_page_has_both_meta_tags() -> None:
    page = discovery_page(None, layout())
    assert page is not None
    assert (
        '<meta name="ac-discovery" content="localhost/hello '
        'http://localhost:8080/images/{name}-{version}-{os}-{arch}.{ext}">' in page
    )
    assert (
        '<meta name="ac-discovery-pubkeys" content="localhost/hello '
        'http://localhost:8080/pubkeys/ABCDEF0123456789ABCDEF0123456789ABCDEF01.asc">' in page
    )


def test_existing_page_keeps_its_content_and_tags_and_gets_only_missing_tags() -> None:
    own_key = dict(layout().meta_tags())["ac-discovery-pubkeys"]
    existing = (
        "<!doctype html>\n<HTML><Head>\n<title>Home</title>\n"
        '<meta name="description" content="keep me">\n'
        '<meta name="ac-discovery-pubkeys" content="localhost/hello https://old.example/old.asc">\n'
        f'<meta name="AC-Discovery-Pubkeys" content="{own_key}" />\n'
        "</Head>\n<body><p>Our images</p></body></HTML>\n"
    )
    page = discovery_page(existing, layout())
    assert page is not None
    discovery = dict(layout().meta_tags())["ac-discovery"]
    added = f'<meta name="ac-discovery" content="{discovery}">\n'
    # Only the missing tag was added, at the end of the head; everything else is untouched.
    assert page.replace(added, "") == existing
    assert page.index(added) < page.index("</Head>")
    assert discovery_page(page, layout()) is None


@pytest.mark.parametrize(
    ("existing", "before"),
    [("<html><body>x</body></html>", "<body>"), ("just text", "just text")],
)
def test_tags_go_before_the_body_or_first_when_there_is_no_head(existing: str, before: str) -> None:
    page = discovery_page(existing, layout())
    assert page is not None
    assert page.index('name="ac-discovery"') < page.index(before)
    assert before in page


def test_credentials_in_the_site_url_are_refused() -> None:
    def site(dest: str, environ: dict[str, str]) -> object:
        return open_site(dest, environ=environ, tls_verify=True, retry=FAST)

    with pytest.raises(UsageError, match="carries credentials"):
        site(f"https://user:{PASSWORD}@example.com/site", {})
    with pytest.raises(UsageError, match="only directories and http"):
        site("ftp://example.com/site", {})
    with pytest.raises(UsageError, match="both"):
        site("https://example.com/", {"DUALBUILD_ACI_USER": "u"})


def test_aci_url_defaults_to_https_on_the_names_host(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(
        '[image]\nname = "example.com/app"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n'
        '[publish]\naci_url = "https://x"\naci = "site"\n'
    )
    recipe = load_recipe(path)
    assert publish_targets(recipe, docker=None, aci=None, aci_url=None).aci_url == "https://x"
    given = publish_targets(recipe, docker=None, aci="/srv/www", aci_url="http://localhost:8080/")
    assert (given.aci_url, given.aci) == ("http://localhost:8080", "/srv/www")
    assert publish_targets(recipe, docker=None, aci=None, aci_url=None).aci == str(tmp_path / "site")
    bare = dataclasses.replace(recipe, publish=dataclasses.replace(recipe.publish, aci_url=None))
    assert publish_targets(bare, docker=None, aci=None, aci_url=None).aci_url == "https://example.com"
    with pytest.raises(UsageError):
        check_site_url("https://example.com/?q=1")


def test_retries_transient_failures_only_and_a_bounded_number_of_times() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert with_retries("x", flaky, policy=FAST, transient=lambda e: isinstance(e, ConnectionError)) == "ok"
    assert len(calls) == 3
    calls.clear()

    def down() -> str:
        calls.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError):
        with_retries("x", down, policy=FAST, transient=lambda e: isinstance(e, ConnectionError))
    assert len(calls) == FAST.attempts
    calls.clear()
    with pytest.raises(ValueError, match="bad"):
        with_retries("x", lambda: calls.append(1) or int("bad"), policy=FAST, transient=lambda e: False)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("pinging container registry h: invalid status code from registry 503 (Service Unavailable)", True),
        ('Get "http://h/v2/": read tcp 1->2: read: connection reset by peer', True),
        ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', True),
        ("received unexpected HTTP status: 502 Bad Gateway", True),
        ("reading manifest 1.0.0 in h/t/hello: manifest unknown: manifest unknown", False),
        ("reading manifest 1.0.0 in h/t/hello: unauthorized: authentication required", False),
        ("copying blob sha256:5030500503: digest mismatch", False),
    ],
)
def test_skopeo_failures_are_classified(message: str, transient: bool) -> None:
    assert bool(_TRANSIENT.search(message)) is transient
