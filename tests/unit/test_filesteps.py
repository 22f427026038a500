"""File steps on a mounted root: paths resolve as the container sees them, never outside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualbuild.builder.filesteps import (
    container_path,
    make_directory,
    make_symlink,
    remove_path,
    resolve_in_root,
    write_file,
)
from dualbuild.errors import BuildError


@pytest.fixture
def owners(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """Ownership changes, recorded instead of made (they would need root)."""
    seen: dict[str, tuple[int, int]] = {}

    def record(path: object, uid: int, gid: int) -> None:
        seen[os.fsdecode(path) if not isinstance(path, int) else f"fd:{path}"] = (uid, gid)

    for name in ("chown", "lchown", "fchown"):
        monkeypatch.setattr(os, name, record)
    return seen


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/", root / "etc" / "up")  # absolute: the root of the image, not of the host
    os.symlink("../../../../..", root / "dots")
    return root


def test_links_out_of_the_root_stay_inside_it(root: Path) -> None:
    assert resolve_in_root(root, "/etc/up/etc/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "/dots/etc/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "/../../etc") == root / "etc"
    assert resolve_in_root(root, "/etc/up", follow_last=False) == root / "etc" / "up"


def test_a_symlink_loop_is_a_build_error(root: Path) -> None:
    os.symlink("loop", root / "loop")
    with pytest.raises(BuildError, match="too many levels of symbolic links"):
        resolve_in_root(root, "/loop/x")


def test_relative_paths_are_taken_from_the_workdir() -> None:
    assert container_path("bin/app", "/srv") == "/srv/bin/app"
    assert container_path("../x", None) == "/x"
    assert container_path("/a/./b/", "/srv") == "/a/b"


def test_write_makes_parents_and_writes_through_an_image_symlink(
    root: Path, owners: dict[str, tuple[int, int]]
) -> None:
    write_file(root, "/etc/up/opt/app/config", b"x=1\n", mode=0o640, owner="1000:1000")
    target = root / "opt" / "app" / "config"
    assert target.read_bytes() == b"x=1\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert (root / "opt").stat().st_mode & 0o777 == 0o755
    assert (1000, 1000) in owners.values()


def test_write_refuses_a_directory_and_replaces_a_file(
    root: Path, owners: dict[str, tuple[int, int]]
) -> None:
    with pytest.raises(BuildError, match="is a directory"):
        write_file(root, "/etc", b"", mode=0o644, owner=None)
    write_file(root, "/etc/motd", b"old", mode=0o644, owner=None)
    write_file(root, "etc/motd", b"new", mode=0o600, owner=None)
    assert (root / "etc/motd").read_bytes() == b"new"
    assert (root / "etc/motd").stat().st_mode & 0o777 == 0o600


def test_mkdir_with_and_without_parents(root: Path, owners: dict[str, tuple[int, int]]) -> None:
    make_directory(root, "/var/lib/app", parents=True, mode=0o750, owner="10:20")
    assert (root / "var/lib/app").stat().st_mode & 0o777 == 0o750
    assert owners[os.fspath(root / "var/lib/app")] == (10, 20)
    with pytest.raises(BuildError, match="parent directory does not exist"):
        make_directory(root, "/no/such/dir", parents=False, mode=0o755, owner=None)
    (root / "file").write_text("")
    with pytest.raises(BuildError, match="exists and is not a directory"):
        make_directory(root, "/file", parents=True, mode=0o755, owner=None)


def test_symlink_and_remove(root: Path, owners: dict[str, tuple[int, int]]) -> None:
    make_symlink(root, "/usr/bin/app", "/opt/app/bin/app")
    assert os.readlink(root / "usr/bin/app") == "/opt/app/bin/app"
    with pytest.raises(BuildError, match="already exists"):
        make_symlink(root, "/usr/bin/app", "/elsewhere")
    remove_path(root, "/etc/up")  # the link itself, not what it points to
    assert not (root / "etc/up").is_symlink()
    assert (root / "usr").is_dir()
    with pytest.raises(BuildError, match="no such file"):
        remove_path(root, "/etc/up")
    with pytest.raises(BuildError, match="refusing to remove the root"):
        remove_path(root, "/dots/..")
