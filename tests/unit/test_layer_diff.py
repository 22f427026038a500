"""A made layer: the difference of two trees, whiteouts included, and applying it gives the upper tree."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dualbuild.layer.diff import Changes, changes
from dualbuild.layer.feed import DirectLayer
from dualbuild.layer.tree import EntryType, Tree, snapshot
from dualbuild.verify.entries import ArchivedEntry, compare_entries, read_entries
from dualbuild.verify.layers import AppliedLayers, resolve_hardlinks
from tests.support import SDE


def entries_of(tree: Tree) -> list[ArchivedEntry]:
    """The tree written as a tar by the emitters' writer, read back."""
    buffer = io.BytesIO()
    DirectLayer(tree, prefix="", mtime_clamp=SDE).write_to(buffer)
    buffer.seek(0)
    return list(read_entries(buffer))


def lower_tree(root: Path) -> Path:
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "etc" / "conf.d" / "a.conf").write_text("a\n")
    (root / "etc" / "conf.d" / "b.conf").write_text("b\n")
    (root / "etc" / "motd").write_text("hello\n")
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "README").write_text("docs\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    os.chmod(root / "bin" / "tool", 0o755)
    os.symlink("tool", root / "bin" / "t1")
    (root / "var").mkdir()
    (root / "var" / "data").write_text("1234")
    (root / "var" / "kept").write_text("stays")
    (root / "opt").mkdir()
    (root / "opt" / "thing").write_text("file that becomes a directory")
    return root


def upper_from(lower: Path, upper: Path) -> Path:
    # A copy keeps modes and mtimes but not ctimes: every file has to be compared.
    shutil.copytree(lower, upper, symlinks=True)
    return upper


def layer(lower: Path | None, upper: Path) -> tuple[Tree, list[ArchivedEntry]]:
    tree = changes(lower, upper, SDE)
    return tree, entries_of(tree)


def applied(lower: Path, upper: Path) -> list[str]:
    """Differences between the upper tree and the lower tree with the layer applied."""
    merged = AppliedLayers()
    merged.apply(entries_of(snapshot(lower, SDE)))
    merged.apply(layer(lower, upper)[1])
    return compare_entries(
        merged.entries(), resolve_hardlinks(iter(entries_of(snapshot(upper, SDE)))), ("applied", "upper")
    )


def test_two_copies_of_one_tree_make_an_empty_layer(tmp_path: Path) -> None:
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    tree, found = layer(lower, upper)
    assert isinstance(tree.entries, Changes)
    assert changes(lower, upper, SDE).entries.empty()  # type: ignore[attr-defined]
    assert found == []


def test_added_changed_and_removed_paths_with_their_parents(tmp_path: Path) -> None:
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    (upper / "etc" / "motd").write_text("HELLO\n")  # same size, new content
    os.utime(upper / "etc" / "motd", ns=(os.stat(lower / "etc" / "motd").st_mtime_ns,) * 2)
    (upper / "usr" / "share" / "doc" / "NEW").write_text("new\n")
    os.unlink(upper / "bin" / "t1")
    os.symlink("tOol", upper / "bin" / "t1")  # a link to another target of the same length
    os.unlink(upper / "var" / "data")
    _, found = layer(lower, upper)
    paths = [(entry.path, entry.type) for entry in found]
    assert ("etc/motd", EntryType.FILE) in paths
    assert ("usr/share/doc/NEW", EntryType.FILE) in paths
    assert ("bin/t1", EntryType.SYMLINK) in paths
    assert ("var/.wh.data", EntryType.FILE) in paths  # a whiteout is an empty regular file
    # Parents come before their children; what did not change is not there.
    assert [p for p, _ in paths].index("usr") < [p for p, _ in paths].index("usr/share/doc/NEW")
    assert not {"etc/conf.d/a.conf", "bin/tool", "opt/thing"} & {p for p, _ in paths}
    whiteout = next(entry for entry in found if entry.path == "var/.wh.data")
    assert (whiteout.size, whiteout.mode) == (0, 0)
    assert applied(lower, upper) == []


def test_a_directory_that_kept_nothing_gets_an_opaque_whiteout(tmp_path: Path) -> None:
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    shutil.rmtree(upper / "etc" / "conf.d")
    (upper / "etc" / "conf.d").mkdir()
    (upper / "etc" / "conf.d" / "c.conf").write_text("c\n")
    _, found = layer(lower, upper)
    paths = [entry.path for entry in found]
    assert "etc/conf.d/.wh..wh..opq" in paths
    assert not [path for path in paths if path.startswith("etc/conf.d/.wh.a")]
    assert applied(lower, upper) == []


def test_a_path_that_changes_kind_replaces_what_was_there(tmp_path: Path) -> None:
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    os.unlink(upper / "opt" / "thing")
    (upper / "opt" / "thing").mkdir()
    (upper / "opt" / "thing" / "inside").write_text("x")
    shutil.rmtree(upper / "usr" / "share")
    (upper / "usr" / "share").write_text("now a file")
    _, found = layer(lower, upper)
    kinds = {entry.path: entry.type for entry in found}
    assert kinds["opt/thing"] is EntryType.DIR
    assert kinds["usr/share"] is EntryType.FILE
    assert "usr/share/doc/.wh.README" not in kinds
    assert applied(lower, upper) == []


def test_a_new_hard_link_brings_its_whole_inode(tmp_path: Path) -> None:
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    os.link(upper / "bin" / "tool", upper / "bin" / "tool2")
    _, found = layer(lower, upper)
    by_path = {entry.path: entry for entry in found}
    # The old path's link count changed too: both are in the layer, the second a link to the first.
    assert by_path["bin/tool"].type is EntryType.FILE
    assert by_path["bin/tool2"].type is EntryType.HARDLINK
    assert by_path["bin/tool2"].link_target == "bin/tool"
    assert applied(lower, upper) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda root: os.chmod(root / "bin" / "tool", 0o700),
        lambda root: os.utime(root / "etc" / "motd", (1000, 1000)),
        lambda root: (root / "var" / "data").write_text("12345"),
        lambda root: shutil.rmtree(root / "etc"),
        lambda root: os.rename(root / "bin" / "tool", root / "bin" / "renamed"),
    ],
    ids=["mode", "mtime", "size", "subtree", "rename"],
)
def test_applying_the_layer_gives_the_upper_tree(tmp_path: Path, change: Callable[[Path], object]) -> None:
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    change(upper)
    assert layer(lower, upper)[1] != []
    assert applied(lower, upper) == []


def test_no_lower_tree_is_the_whole_upper_tree(tmp_path: Path) -> None:
    upper = lower_tree(tmp_path / "upper")
    _, found = layer(None, upper)
    assert [entry.path for entry in found] == [entry.path for entry in snapshot(upper, SDE).entries]


def test_a_directory_only_touched_after_the_epoch_is_no_change(tmp_path: Path) -> None:
    # Both times clamp to the epoch: the layer would record the same entry, so it has none, and
    # its bytes do not depend on the second in which a step touched the directory.
    lower = lower_tree(tmp_path / "lower")
    upper = upper_from(lower, tmp_path / "upper")
    os.utime(lower / "etc", (SDE + 10, SDE + 10))
    os.utime(upper / "etc", (SDE + 20, SDE + 20))
    assert layer(lower, upper)[1] == []
    os.utime(upper / "etc", (SDE - 20, SDE - 20))  # before the epoch: recorded as it is
    assert [entry.path for entry in layer(lower, upper)[1]] == ["etc"]
