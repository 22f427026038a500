"""The ACI site's plan for tags: which files, links or copies, moved, kept, refused, rolled back."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dualbuild.publish.aci import AciPlan, SiteLink, apply, plan_uploads, wanted_files
from dualbuild.publish.discovery import SiteLayout
from dualbuild.publish.site import DirSite
from dualbuild.publish.types import SidePublishError

FINGERPRINT = "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
IMAGES = "images/localhost"


def layout(version: str = "1.0.0", tags: tuple[str, ...] = ("latest", "1.0")) -> SiteLayout:
    return SiteLayout(
        name="localhost/hello", version=version, os="linux", arch="aarch64",
        aci_url="http://localhost:8080", fingerprint=FINGERPRINT, tags=tags,
    )  # fmt: skip


def aci_bytes(version: str) -> bytes:
    """A small gzipped ACI whose manifest carries ``version`` as its version label."""
    manifest = json.dumps(
        {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "localhost/hello",
         "labels": [{"name": "version", "value": version}]}
    ).encode()  # fmt: skip
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        entry = tarfile.TarInfo("manifest")
        entry.size = len(manifest)
        archive.addfile(entry, io.BytesIO(manifest))
        root = tarfile.TarInfo("rootfs")
        root.type = tarfile.DIRTYPE
        archive.addfile(root)
    return gzip.compress(raw.getvalue(), mtime=0)


class Artifacts:
    """The key, ACI and signature of one build, as publish has them in its scratch directory."""

    def __init__(self, directory: Path, version: str) -> None:
        directory.mkdir(parents=True)
        self.work = directory / "work"
        self.work.mkdir()
        self.key = directory / "key.asc"
        self.key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\nkey\n")
        self.aci = directory / "hello.aci"
        self.aci.write_bytes(aci_bytes(version))
        self.signature = directory / "hello.aci.asc"
        self.signature.write_text(f"-----BEGIN PGP SIGNATURE-----\n{version}\n")


def plan_for(site: DirSite, files: Artifacts, site_layout: SiteLayout, *, force: bool = False) -> AciPlan:
    wanted = wanted_files(
        site_layout, key=files.key, aci=files.aci, signature=files.signature, links=site.links
    )
    uploads, kept = plan_uploads(site, site_layout, wanted, files.work, force=force)
    return AciPlan(site=site, layout=site_layout, uploads=tuple(uploads), kept=tuple(kept))


class CopyingSite(DirSite):
    """A site that cannot link, like an HTTP PUT server: tags are copies."""

    @property
    def links(self) -> bool:
        return False


class LastLinkFailingSite(DirSite):
    def symlink(self, path: str, text: str) -> None:
        if path.endswith("hello-1.0-linux-aarch64.aci.asc"):
            raise OSError("disk full")
        super().symlink(path, text)


def test_every_tag_gets_the_aci_and_its_signature_as_discovery_renders_them(tmp_path: Path) -> None:
    files = Artifacts(tmp_path / "a", "1.0.0")
    linked = wanted_files(layout(), key=files.key, aci=files.aci, signature=files.signature, links=True)
    version_aci = SiteLink("hello-1.0.0-linux-aarch64.aci")
    version_asc = SiteLink("hello-1.0.0-linux-aarch64.aci.asc")
    assert [(w.path, w.content, w.role) for w in linked] == [
        (f"pubkeys/{FINGERPRINT}.asc", files.key, "key"),
        # Each signature before its ACI: a publish cut short leaves no ACI without its signature.
        (f"{IMAGES}/hello-1.0.0-linux-aarch64.aci.asc", files.signature, "version"),
        (f"{IMAGES}/hello-1.0.0-linux-aarch64.aci", files.aci, "version"),
        (f"{IMAGES}/hello-latest-linux-aarch64.aci.asc", version_asc, "tag"),
        (f"{IMAGES}/hello-latest-linux-aarch64.aci", version_aci, "tag"),
        (f"{IMAGES}/hello-1.0-linux-aarch64.aci.asc", version_asc, "tag"),
        (f"{IMAGES}/hello-1.0-linux-aarch64.aci", version_aci, "tag"),
    ]
    # The discovery template filled in for a tag gives the tag's path.
    template = dict(layout().meta_tags())["ac-discovery"].split(" ", 1)[1]
    filled = template.format(name="localhost/hello", version="latest", os="linux", arch="aarch64", ext="aci")
    assert filled == layout().url(linked[4].path)
    copied = wanted_files(layout(), key=files.key, aci=files.aci, signature=files.signature, links=False)
    assert [w.path for w in copied] == [w.path for w in linked]
    assert [w.content for w in copied[3:]] == [files.signature, files.aci] * 2


def test_a_directory_site_links_each_tag_to_the_version_and_publishing_again_keeps_all(
    tmp_path: Path,
) -> None:
    site = DirSite(tmp_path / "site")
    files = Artifacts(tmp_path / "a", "1.0.0")
    plan = plan_for(site, files, layout())
    assert all(upload.previous is None for upload in plan.uploads)
    link = f"/{IMAGES}/hello-latest-linux-aarch64.aci (a link to hello-1.0.0-linux-aarch64.aci)"
    assert f"add {tmp_path / 'site'}{link}" in plan.actions()
    apply(plan)
    images = tmp_path / "site" / IMAGES
    for tag in ("latest", "1.0"):
        for ext in ("aci", "aci.asc"):
            path = images / f"hello-{tag}-linux-aarch64.{ext}"
            assert path.is_symlink()
            assert os.readlink(path) == f"hello-1.0.0-linux-aarch64.{ext}"  # relative: the site can move
            assert path.read_bytes() == (files.aci if ext == "aci" else files.signature).read_bytes()
    assert not (images / "hello-1.0.0-linux-aarch64.aci").is_symlink()
    again = plan_for(site, files, layout())
    assert again.uploads == ()
    assert len(again.kept) == 7


def test_tags_move_to_the_newest_publish_and_unlisted_tags_stay(tmp_path: Path) -> None:
    site = DirSite(tmp_path / "site")
    apply(plan_for(site, Artifacts(tmp_path / "a", "1.0.0"), layout()))
    newer = Artifacts(tmp_path / "b", "1.1.0")
    plan = plan_for(site, newer, layout("1.1.0", ("latest",)))
    moved = {u.path: u.previous for u in plan.uploads if u.previous is not None}
    assert moved == {
        f"{IMAGES}/hello-latest-linux-aarch64.aci": SiteLink("hello-1.0.0-linux-aarch64.aci"),
        f"{IMAGES}/hello-latest-linux-aarch64.aci.asc": SiteLink("hello-1.0.0-linux-aarch64.aci.asc"),
    }
    apply(plan)
    images = tmp_path / "site" / IMAGES
    assert os.readlink(images / "hello-latest-linux-aarch64.aci") == "hello-1.1.0-linux-aarch64.aci"
    assert (images / "hello-latest-linux-aarch64.aci").read_bytes() == newer.aci.read_bytes()
    assert (images / "hello-latest-linux-aarch64.aci.asc").read_bytes() == newer.signature.read_bytes()
    # "1.0" was not listed this time: it still names 1.0.0, whose files are untouched.
    assert os.readlink(images / "hello-1.0-linux-aarch64.aci") == "hello-1.0.0-linux-aarch64.aci"
    assert (images / "hello-1.0-linux-aarch64.aci").read_bytes() == aci_bytes("1.0.0")


def test_a_planted_symlink_is_replaced_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    images = tmp_path / "site" / IMAGES
    images.mkdir(parents=True)
    (images / "hello-latest-linux-aarch64.aci").symlink_to(outside)
    (images / "hello-1.0.0-linux-aarch64.aci.asc").symlink_to(outside)
    site = DirSite(tmp_path / "site")
    files = Artifacts(tmp_path / "a", "1.0.0")
    apply(plan_for(site, files, layout(), force=True))
    assert outside.read_bytes() == b"not yours"
    assert os.readlink(images / "hello-latest-linux-aarch64.aci") == "hello-1.0.0-linux-aarch64.aci"
    signature = images / "hello-1.0.0-linux-aarch64.aci.asc"
    assert not signature.is_symlink()
    assert signature.read_bytes() == files.signature.read_bytes()


def test_a_tag_does_not_replace_a_published_version_of_its_name_without_force(tmp_path: Path) -> None:
    images = tmp_path / "site" / IMAGES
    images.mkdir(parents=True)
    (images / "hello-1.0-linux-aarch64.aci").write_bytes(aci_bytes("1.0"))
    site = DirSite(tmp_path / "site")
    files = Artifacts(tmp_path / "a", "1.0.0")
    with pytest.raises(SidePublishError, match=r"is the published version 1\.0 of localhost/hello"):
        plan_for(site, files, layout())
    apply(plan_for(site, files, layout(), force=True))
    assert (images / "hello-1.0-linux-aarch64.aci").is_symlink()


def test_a_version_replaces_what_was_only_a_tag_copy_there(tmp_path: Path) -> None:
    # An HTTP site: tag 1.0 of version 1.0.0 was copied to the path that version 1.0 now takes.
    site = CopyingSite(tmp_path / "site")
    apply(plan_for(site, Artifacts(tmp_path / "a", "1.0.0"), layout()))
    images = tmp_path / "site" / IMAGES
    assert not (images / "hello-1.0-linux-aarch64.aci").is_symlink()
    assert (images / "hello-1.0-linux-aarch64.aci").read_bytes() == aci_bytes("1.0.0")
    newer = Artifacts(tmp_path / "b", "1.0")
    plan = plan_for(site, newer, layout("1.0", ("latest",)))
    apply(plan)
    assert (images / "hello-1.0-linux-aarch64.aci").read_bytes() == newer.aci.read_bytes()
    assert (images / "hello-latest-linux-aarch64.aci").read_bytes() == newer.aci.read_bytes()
    assert (images / "hello-latest-linux-aarch64.aci.asc").read_bytes() == newer.signature.read_bytes()
    # The same version with other bytes is still refused.
    other = Artifacts(tmp_path / "c", "1.0")
    other.aci.write_bytes(aci_bytes("1.0") + b"\0")
    with pytest.raises(SidePublishError, match="already holds a different ACI"):
        plan_for(site, other, layout("1.0", ("latest",)))


def test_a_failed_publish_restores_moved_tags_as_links(tmp_path: Path) -> None:
    apply(plan_for(DirSite(tmp_path / "site"), Artifacts(tmp_path / "a", "1.0.0"), layout()))
    images = tmp_path / "site" / IMAGES
    before = {p: os.readlink(p) for p in images.iterdir() if p.is_symlink()}
    site = LastLinkFailingSite(tmp_path / "site")
    plan = plan_for(site, Artifacts(tmp_path / "b", "1.1.0"), layout("1.1.0"))
    with pytest.raises(SidePublishError, match="failed: disk full") as caught:
        apply(plan)
    assert "site rolled back" in caught.value.not_published[0]
    assert {p: os.readlink(p) for p in images.iterdir() if p.is_symlink()} == before
    assert not (images / "hello-1.1.0-linux-aarch64.aci").exists()


def test_what_a_killed_publish_left_in_the_site_goes_with_the_next_write(tmp_path: Path) -> None:
    images = tmp_path / "site" / IMAGES
    images.mkdir(parents=True)
    dead = 2**22  # PIDs are below pid_max, which is at most 2**22
    (images / f".tmp-{dead}-hello-1.0.0-linux-aarch64.aci").write_bytes(b"half an ACI")
    (images / f".tmp-{os.getpid()}-other").write_bytes(b"ours, being written")
    source = tmp_path / "x.asc"
    source.write_text("signature")
    DirSite(tmp_path / "site").put(f"{IMAGES}/hello-1.0.0-linux-aarch64.aci.asc", source, "text/plain")
    assert sorted(p.name for p in images.iterdir()) == [
        f".tmp-{os.getpid()}-other",
        "hello-1.0.0-linux-aarch64.aci.asc",
    ]
