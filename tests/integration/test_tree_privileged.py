"""The tree walk of what only root can make: device nodes, capabilities, other owners."""

from __future__ import annotations

from pathlib import Path

from dualbuild.layer.tree import Entry, EntryType, Tree, snapshot
from tests.support import CAPABILITY, SDE, build_rich_tree, require_root


def by_path(tree: Tree) -> dict[str, Entry]:
    return {entry.path: entry for entry in tree.entries}


def test_snapshot_devices_and_capabilities(tmp_path: Path) -> None:
    require_root()
    tree = snapshot(build_rich_tree(tmp_path / "root", privileged=True), SDE)
    entries = by_path(tree)
    device = entries["devices/null"]
    assert (device.type, device.devmajor, device.devminor, device.size) == (EntryType.CHAR, 1, 3, 0)
    assert entries["bin/ping"].xattrs == (("security.capability", CAPABILITY),)
    assert (entries["owned"].uid, entries["owned"].gid) == (1000, 1001)
