"""A directory site follows no symbolic link planted in it: nothing lands, is read or goes outside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualbuild import files
from dualbuild.errors import PublishError
from dualbuild.publish.aci import apply
from dualbuild.publish.discovery import discovery_page
from dualbuild.publish.site import DirSite
from tests.unit.test_publish_tags import IMAGES, Artifacts, layout, plan_for

PAGE = "hello/index.html"
SECRET = '<meta name="root-only" content="a secret">\n'


def elsewhere(tmp_path: Path) -> Path:
    """A directory outside the site, as an attacker's link would point to."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


def signature_file(tmp_path: Path) -> Path:
    source = tmp_path / "x.asc"
    source.write_text("-----BEGIN PGP SIGNATURE-----\n")
    return source


def test_an_aci_never_lands_outside_the_site_through_a_linked_directory(tmp_path: Path) -> None:
    outside = elsewhere(tmp_path)
    (tmp_path / "site").mkdir()
    (tmp_path / "site/images").symlink_to(outside)
    site = DirSite(tmp_path / "site")
    built = Artifacts(tmp_path / "a", "1.0.0")
    # The plan reads every path first: publish refuses before anything is written.
    with pytest.raises(PublishError, match=f"{tmp_path}/site/images is a symbolic link") as caught:
        plan_for(site, built, layout(), force=True)
    assert caught.value.exit_code == 5
    assert "may be a link" in (caught.value.hint or "")
    # And a write of its own (a link swapped in after the plan) is refused just the same.
    with pytest.raises(PublishError, match="site/images is a symbolic link"):
        site.put(f"{IMAGES}/hello-1.0.0-linux-aarch64.aci", built.aci, "application/octet-stream")
    with pytest.raises(PublishError, match="site/images is a symbolic link"):
        site.symlink(f"{IMAGES}/hello-latest-linux-aarch64.aci", "hello-1.0.0-linux-aarch64.aci")
    assert list(outside.iterdir()) == []


def test_a_linked_directory_deep_in_the_site_is_refused_too(tmp_path: Path) -> None:
    outside = elsewhere(tmp_path)
    (tmp_path / "site/images").mkdir(parents=True)
    (tmp_path / "site/images/localhost").symlink_to(outside)
    site = DirSite(tmp_path / "site")
    with pytest.raises(PublishError, match="site/images/localhost is a symbolic link"):
        site.put(f"{IMAGES}/hello-1.0.0-linux-aarch64.aci.asc", signature_file(tmp_path), "text/plain")
    assert list(outside.iterdir()) == []


def test_a_file_behind_a_linked_directory_is_never_read(tmp_path: Path) -> None:
    # site/hello -> /root: the "page" there is a root-only file.
    private = elsewhere(tmp_path)
    (private / "index.html").write_text(SECRET)
    (private / "index.html").chmod(0o600)
    (tmp_path / "site").mkdir()
    (tmp_path / "site/hello").symlink_to(private)
    site = DirSite(tmp_path / "site")
    copy = tmp_path / "copy"
    with pytest.raises(PublishError, match="site/hello is a symbolic link"):
        site.fetch(PAGE, copy)
    assert not copy.exists()
    with pytest.raises(PublishError, match="site/hello is a symbolic link"):
        site.readlink(PAGE)


def test_delete_and_prune_remove_nothing_behind_a_linked_directory(tmp_path: Path) -> None:
    outside = elsewhere(tmp_path)
    (outside / "hello-1.0.0-linux-aarch64.aci").write_bytes(b"someone else's")
    site = DirSite(tmp_path / "site")
    site.put(f"{IMAGES}/hello-1.0.0-linux-aarch64.aci.asc", signature_file(tmp_path), "text/plain")
    # Between the write and the rollback, images/ becomes a link to a tree with the same names.
    (tmp_path / "site/images/localhost/hello-1.0.0-linux-aarch64.aci.asc").unlink()
    (tmp_path / "site/images/localhost").rmdir()
    (tmp_path / "site/images").rmdir()
    (tmp_path / "site/images").symlink_to(outside)
    (outside / "localhost").mkdir()
    site.prune()  # it made images/localhost: not the empty localhost/ over there
    assert (outside / "localhost").is_dir()
    assert (tmp_path / "site/images").is_symlink()
    with pytest.raises(PublishError, match="site/images is a symbolic link"):
        site.delete("images/hello-1.0.0-linux-aarch64.aci")
    assert (outside / "hello-1.0.0-linux-aarch64.aci").read_bytes() == b"someone else's"


def test_a_page_linked_to_a_root_only_file_is_replaced_not_read(tmp_path: Path) -> None:
    private = elsewhere(tmp_path) / "shadow"
    private.write_text(SECRET)
    private.chmod(0o600)
    (tmp_path / "site/hello").mkdir(parents=True)
    (tmp_path / "site" / PAGE).symlink_to(private)
    site = DirSite(tmp_path / "site")
    previous = tmp_path / "previous-page"
    # What publish does with the page: read what is there, add its meta tags, write it.
    assert site.fetch(PAGE, previous) is False
    assert not previous.exists()
    page = tmp_path / "page.html"
    page.write_text(discovery_page(None, layout()) or "")
    site.put(PAGE, page, "text/html")
    served = tmp_path / "site" / PAGE
    assert not served.is_symlink()
    assert "a secret" not in served.read_text()
    assert served.stat().st_mode & 0o7777 == 0o644  # publish's mode, not the link target's
    assert private.read_text() == SECRET
    assert private.stat().st_mode & 0o7777 == 0o600


def test_a_tag_link_to_a_link_is_not_read_through(tmp_path: Path) -> None:
    private = elsewhere(tmp_path) / "key"
    private.write_text("private")
    images = tmp_path / "site" / IMAGES
    images.mkdir(parents=True)
    (images / "hello-1.0.0-linux-aarch64.aci").symlink_to(private)
    (images / "hello-latest-linux-aarch64.aci").symlink_to("hello-1.0.0-linux-aarch64.aci")
    site = DirSite(tmp_path / "site")
    assert site.fetch(f"{IMAGES}/hello-latest-linux-aarch64.aci", tmp_path / "copy") is False
    assert site.fetch(f"{IMAGES}/hello-1.0.0-linux-aarch64.aci", tmp_path / "copy") is False
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize(
    ("before", "after"), [(0o600, 0o600), (0o640, 0o640), (0o666, 0o644), (0o4755, 0o644)]
)
def test_a_replaced_file_never_gets_a_wider_mode(tmp_path: Path, before: int, after: int) -> None:
    served = tmp_path / "site" / PAGE
    served.parent.mkdir(parents=True)
    served.write_text("<html><head></head></html>\n")
    served.chmod(before)
    page = tmp_path / "page.html"
    page.write_text("<html><head><meta name=new></head></html>\n")
    DirSite(tmp_path / "site").put(PAGE, page, "text/html")
    assert served.read_text() == page.read_text()
    assert served.stat().st_mode & 0o7777 == after


def test_a_file_replacing_a_tags_link_takes_the_mode_of_what_the_link_served(tmp_path: Path) -> None:
    images = tmp_path / "site" / "images"
    images.mkdir(parents=True)
    (images / "hello-1.0.0.aci.asc").write_text("old signature\n")
    (images / "hello-1.0.0.aci.asc").chmod(0o640)
    (images / "hello-latest.aci.asc").symlink_to("hello-1.0.0.aci.asc")  # read through by fetch
    DirSite(tmp_path / "site").put("images/hello-latest.aci.asc", signature_file(tmp_path), "text/plain")
    replaced = images / "hello-latest.aci.asc"
    assert not replaced.is_symlink()
    assert replaced.stat().st_mode & 0o7777 == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group takes root")
def test_a_narrower_file_keeps_its_group_so_the_server_still_reads_it(tmp_path: Path) -> None:
    served = tmp_path / "site" / PAGE
    served.parent.mkdir(parents=True)
    served.write_text("<html></html>\n")
    served.chmod(0o640)
    os.chown(served, -1, 4242)  # the web server's group
    page = tmp_path / "page.html"
    page.write_text("<html><head><meta name=new></head></html>\n")
    DirSite(tmp_path / "site").put(PAGE, page, "text/html")
    assert (served.stat().st_mode & 0o7777, served.stat().st_gid) == (0o640, 4242)


def test_a_site_root_that_is_a_link_is_the_users_choice(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "site").symlink_to(tmp_path / "real")
    site = DirSite(tmp_path / "site")
    built = Artifacts(tmp_path / "a", "1.0.0")
    apply(plan_for(site, built, layout()))
    assert site.location == str(tmp_path / "site")
    real = tmp_path / "real" / IMAGES
    assert (real / "hello-1.0.0-linux-aarch64.aci").read_bytes() == built.aci.read_bytes()
    assert os.readlink(real / "hello-latest-linux-aarch64.aci") == "hello-1.0.0-linux-aarch64.aci"
    assert plan_for(site, built, layout()).uploads == ()


def test_a_path_that_leaves_the_site_is_refused(tmp_path: Path) -> None:
    site = DirSite(tmp_path / "site")
    with pytest.raises(PublishError, match="is not a path inside the site"):
        site.put("images/../../outside", signature_file(tmp_path), "text/plain")
    assert not (tmp_path / "outside").exists()


def test_atomic_writes_by_name_in_an_open_directory_follow_no_link_swapped_in(tmp_path: Path) -> None:
    # What DirSite relies on: with dir_fd, the temporary file, the rename and the fsync all go
    # through the directory it opened, even when its path becomes a link meanwhile.
    outside = elsewhere(tmp_path)
    (tmp_path / "images").mkdir()
    fd = os.open(tmp_path / "images", os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "images").rename(tmp_path / "opened")
        (tmp_path / "images").symlink_to(outside)
        with files.atomic_output(Path("hello.aci"), mode=0o644, dir_fd=fd) as out:
            out.write(b"aci")
        with files.atomic_path(Path("hello-latest.aci"), dir_fd=fd) as temporary:
            os.symlink("hello.aci", temporary, dir_fd=fd)
        with (
            pytest.raises(ValueError, match="a name in that directory"),
            files.atomic_path(Path("sub/hello.aci"), dir_fd=fd),
        ):
            pass
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []
    assert (tmp_path / "opened/hello.aci").read_bytes() == b"aci"
    assert os.readlink(tmp_path / "opened/hello-latest.aci") == "hello.aci"
    assert sorted(p.name for p in (tmp_path / "opened").iterdir()) == ["hello-latest.aci", "hello.aci"]
