"""The tree snapshot: one sorted walk into canonical entries, and user/group resolution."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from dualbuild.errors import BuildError
from dualbuild.layer.tree import Entry, EntryType, Tree, decode_name, resolve_ids, snapshot, stream
from tests.support import LONG_PATH, NON_UTF8, SDE, build_rich_tree, supports_user_xattrs


def by_path(tree: Tree) -> dict[str, Entry]:
    return {entry.path: entry for entry in tree.entries}


def test_snapshot_records_every_kind(tmp_path: Path) -> None:
    tree = snapshot(build_rich_tree(tmp_path / "root", privileged=False), SDE)
    entries = by_path(tree)
    assert entries["empty"].type is EntryType.DIR
    assert entries["file"] == Entry(
        path="file",
        type=EntryType.FILE,
        mode=0o644,
        uid=os.geteuid(),
        gid=os.getegid(),
        size=6,
        mtime=SDE,
        xattrs=entries["file"].xattrs,
    )
    assert entries["hard"].type is EntryType.HARDLINK
    assert entries["hard"].link_target == "file"
    assert entries["hard"].size == 0
    assert entries["link"].type is EntryType.SYMLINK
    assert entries["link"].link_target == "file"
    assert entries["abs-link"].link_target == "/etc/passwd"
    assert entries["fifo"].type is EntryType.FIFO
    assert entries["bin/suid"].mode == 0o4755
    assert entries["bin/sgid-dir"].mode == 0o2775
    assert entries["tmp"].mode == 0o1777
    assert entries["data.bin"].size == 1 << 20
    assert entries[LONG_PATH].type is EntryType.FILE
    assert len(LONG_PATH) == 200
    assert decode_name(NON_UTF8) in entries
    assert entries[decode_name(NON_UTF8)].path_bytes == NON_UTF8
    # Sockets cannot be archived: skipped, and said so.
    assert "control.sock" not in entries
    assert tree.warnings == ("skipped socket /control.sock: sockets cannot be stored in an image",)
    if supports_user_xattrs(tmp_path):
        assert entries["file"].xattrs == (("user.comment", b"\xff\x00binary"),)
        assert entries["empty"].xattrs == (("user.dir", b"on a directory"),)


def test_a_streamed_tree_gives_the_snapshot_once_and_its_warnings_after(tmp_path: Path) -> None:
    root = build_rich_tree(tmp_path / "root", privileged=os.geteuid() == 0)
    streamed = stream(root, SDE)
    assert list(streamed.warnings) == []  # nothing walked yet
    assert tuple(streamed.entries) == snapshot(root, SDE).entries
    assert list(streamed.warnings) == ["skipped socket /control.sock: sockets cannot be stored in an image"]
    with pytest.raises(BuildError, match="already read; its entries come once"):
        iter(streamed.entries)


def test_a_streamed_tree_does_not_hold_its_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for directory in range(20):
        (root / f"d{directory:02}").mkdir(parents=True)
        for number in range(1000):
            (root / f"d{directory:02}" / f"file-with-a-longish-name-{number:04}").touch()

    def peak_bytes(walk: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            walk()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    held = peak_bytes(lambda: snapshot(root, SDE))
    streamed = peak_bytes(lambda: sum(1 for _ in stream(root, SDE).entries))
    # 20,020 entries held take megabytes; walked one directory at a time, a fraction of it.
    assert held > 2_000_000
    assert streamed < held / 5


def test_a_tree_that_cannot_be_read_is_a_build_error_when_streamed(tmp_path: Path) -> None:
    # Paths beyond PATH_MAX (4096 bytes) cannot be lstat'ed, even by root: ENAMETOOLONG.
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    streamed = stream(root, SDE)
    with pytest.raises(BuildError, match=r"cannot read the image tree at .*: File name too long"):
        list(streamed.entries)
    with pytest.raises(BuildError, match=r"cannot read the image tree at .*: File name too long"):
        snapshot(root, SDE)


def test_order_is_sorted_by_bytes_with_parents_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name in ("b", "a-b", "B", "a.txt", "é"):
        (root / name).write_text(name)
    (root / "a").mkdir()
    (root / "a/z").write_text("z")
    (root / "a/sub").mkdir()
    (root / "a/sub/x").write_text("x")
    paths = [entry.path for entry in snapshot(root, SDE).entries]
    # Component-wise byte order: "a" and its whole subtree come before "a-b" ('-' < '/' would
    # otherwise interleave them); uppercase before lowercase; UTF-8 "é" (0xc3) last.
    assert paths == ["B", "a", "a/sub", "a/sub/x", "a/z", "a-b", "a.txt", "b", "é"]


def test_mtimes_are_clamped_to_source_date_epoch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "old").write_text("old")
    (root / "new").write_text("new")
    os.utime(root / "old", (1000, 1000))
    os.utime(root / "new", (SDE + 5000, SDE + 5000))
    os.symlink("old", root / "link")
    os.utime(root / "link", (SDE + 1, SDE + 1), follow_symlinks=False)
    entries = by_path(snapshot(root, SDE))
    assert entries["old"].mtime == 1000
    assert entries["new"].mtime == SDE
    assert entries["link"].mtime == SDE


def test_hardlink_group_points_at_first_in_walk_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "z").mkdir(parents=True)
    (root / "z/original").write_text("same inode")
    os.link(root / "z/original", root / "a-link")
    os.link(root / "z/original", root / "m-link")
    entries = by_path(snapshot(root, SDE))
    # "a-link" sorts first, so it carries the content and the others link to it.
    assert entries["a-link"].type is EntryType.FILE
    assert entries["a-link"].size == len("same inode")
    assert (entries["m-link"].type, entries["m-link"].link_target) == (EntryType.HARDLINK, "a-link")
    assert (entries["z/original"].type, entries["z/original"].link_target) == (EntryType.HARDLINK, "a-link")


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "escape")
    entries = by_path(snapshot(root, SDE))
    assert list(entries) == ["escape"]
    assert entries["escape"].type is EntryType.SYMLINK


def test_snapshot_rejects_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not a directory"):
        snapshot(tmp_path / "nope", SDE)


def test_snapshot_rejects_a_negative_epoch(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="must not be negative"):
        snapshot(tmp_path, -1)


# --- users and groups ---------------------------------------------------------------------


@pytest.fixture
def id_tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "# comment\nroot:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
        "+nis\nweb:x:33:33::/var/www:/bin/false\n"
    )
    (root / "etc/group").write_text("root:x:0:\napp:x:1001:\nstaff:x:50:app\n")
    return snapshot(root, SDE)


@pytest.mark.parametrize(
    ("user", "group", "expected"),
    [
        (None, None, (0, 0)),
        ("app", None, (1000, 1001)),  # the user's primary group
        ("app", "staff", (1000, 50)),
        ("app", "7", (1000, 7)),
        ("1000", None, (1000, 1001)),  # numeric user with a passwd entry: its group
        ("4242", None, (4242, 0)),  # numeric user without one: gid 0, as Docker runs it
        ("4242", "4343", (4242, 4343)),
        ("web", None, (33, 33)),
        (None, "staff", (0, 50)),
    ],
)
def test_resolve_ids(id_tree: Tree, user: str | None, group: str | None, expected: tuple[int, int]) -> None:
    assert resolve_ids(id_tree, user, group) == expected


def test_unknown_user_is_an_error_naming_it(id_tree: Tree) -> None:
    with pytest.raises(BuildError, match="app user 'ghost' is not in the image's /etc/passwd") as info:
        resolve_ids(id_tree, "ghost", None)
    assert info.value.hint is not None


def test_unknown_group_is_an_error_naming_it(id_tree: Tree) -> None:
    with pytest.raises(BuildError, match="app group 'wheel' is not in the image's /etc/group"):
        resolve_ids(id_tree, "app", "wheel")


def test_names_resolve_inside_the_tree_never_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/passwd").write_text("builder:x:4321:4322::/:/bin/sh\n")
    # An absolute symlink must resolve inside the tree, not to the host's /etc/passwd.
    os.symlink("/usr/lib/passwd", root / "etc/passwd")
    tree = snapshot(root, SDE)
    assert resolve_ids(tree, "builder", None) == (4321, 4322)
    with pytest.raises(BuildError, match="'root' is not in the image's /etc/passwd"):
        resolve_ids(tree, "root", None)


def test_names_without_etc_files_fail(tmp_path: Path) -> None:
    tree = snapshot(tmp_path, SDE)
    assert resolve_ids(tree, "0", None) == (0, 0)
    with pytest.raises(BuildError, match="'app'"):
        resolve_ids(tree, "app", None)
