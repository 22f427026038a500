"""File steps on a tree held in memory: what the kernel does to a mounted root, done to its nodes.

The rules that make both roots give one tree (the build compares their outputs byte for byte):
a name added to or removed from a directory sets the directory's mtime to now; chmod and chown
do not. A file written over an existing one keeps its inode (all its hard links see the new
bytes) and loses ``security.capability``, as truncating and chown-ing a file makes the kernel
drop it. A new directory, file or symlink has the time it was made as its mtime.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

from dualbuild.builder.basetree import NotHeld
from dualbuild.errors import BuildError
from dualbuild.layer.memtree import MemoryTree, Node
from dualbuild.layer.tree import EntryType

_CAPABILITY = "security.capability"


def _now() -> int:
    return int(time.time())


class HeldRoot:
    """A :class:`dualbuild.builder.filesteps.StepRoot` over a :class:`MemoryTree`."""

    def __init__(self, tree: MemoryTree, clock: Callable[[], int] = _now) -> None:
        self.tree = tree
        self._clock = clock

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """``path`` with the tree's symlinks followed inside it (see layer.tree.resolve_in_root)."""
        return self.tree.resolve(path, follow_last=follow_last)

    def _followed(self, place: str) -> Node | None:
        node = self.tree.node(place)
        if node is not None and node.type is EntryType.SYMLINK:
            node = self.tree.node(self.tree.resolve(place))
        return node

    def is_dir(self, place: str) -> bool:
        """Whether a directory is there (a symlink followed)."""
        node = self._followed(place)
        return node is not None and node.type is EntryType.DIR

    def exists(self, place: str) -> bool:
        """Whether anything is there (a symlink followed)."""
        return self._followed(place) is not None

    def lexists(self, place: str) -> bool:
        """Whether anything is there (a symlink not followed)."""
        return self.tree.node(place) is not None

    def is_symlink(self, place: str) -> bool:
        """Whether a symlink is there."""
        node = self.tree.node(place)
        return node is not None and node.type is EntryType.SYMLINK

    def is_real_dir(self, place: str) -> bool:
        """Whether a directory, not a symlink to one, is there; FileNotFoundError: nothing is."""
        node = self.tree.node(place)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), place)
        return node.type is EntryType.DIR

    def listdir(self, place: str) -> list[str]:
        """The names in the directory there."""
        return self.tree.names(place)

    def mkdir(self, place: str, mode: int, uid: int, gid: int) -> None:
        """Make a directory with exactly this mode and owner; its parent must be one."""
        now = self._clock()
        self._add(place, Node(EntryType.DIR, mode, uid, gid, now), now)

    def set_mode_owner(self, place: str, mode: int, uid: int, gid: int) -> None:
        """chmod, then chown, what is there."""
        node = self.tree.change(place)
        node.mode, node.uid, node.gid = mode, uid, gid
        if node.type is not EntryType.DIR:
            node.xattrs = _without_capability(node.xattrs)

    def symlink(self, place: str, target: str) -> None:
        """Make a symlink owned by root."""
        now = self._clock()
        self._add(place, Node(EntryType.SYMLINK, 0o777, 0, 0, now, link_target=target), now)

    def remove(self, place: str) -> None:
        """Remove what is there, a directory with everything in it."""
        _no_hard_links(self.tree, place)
        self.tree.remove(place, touch=self._clock())

    def write(self, place: str, content: bytes, mode: int, uid: int, gid: int) -> None:
        """Create or truncate a regular file, never through a final symlink (OSError ELOOP)."""
        now = self._clock()
        node = self.tree.node(place)
        if node is None:
            self._add(place, Node(EntryType.FILE, mode, uid, gid, now, size=len(content), data=content), now)
            return
        if node.type is EntryType.SYMLINK:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), place)
        if node.type is not EntryType.FILE:
            # On disk this would write into a device or a FIFO of the image: never wanted.
            raise BuildError(f"write /{place}: the path is a {node.type}, not a regular file")
        _no_hard_links(self.tree, place)
        node = self.tree.change(place)
        node.data, node.source, node.offset, node.size = content, -1, 0, len(content)
        node.mode, node.uid, node.gid, node.mtime = mode, uid, gid, now
        node.xattrs = _without_capability(node.xattrs)

    def _add(self, place: str, node: Node, now: int) -> None:
        try:
            self.tree.put(place, node, touch=now)
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), place) from None


def _without_capability(xattrs: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
    return tuple(item for item in xattrs if item[0] != _CAPABILITY)


def _no_hard_links(tree: MemoryTree, place: str) -> None:
    """Leave a change to a file with several names to the extracting build.

    On a mounted root the names stay one inode only while the file is in the container's own
    layer: one in a lower layer (an image base's, or a tree the build went on from) is copied
    up when written, and a removed name leaves the others' link count as it was. Which of the
    two a file is depends on the build's layering and steps, so neither is guessed here.

    Raises:
        NotHeld: the path, or something below it, is such a file.
    """
    if tree.hard_linked(place):
        raise NotHeld(f"/{place} has hard links, whose change depends on the layer it lies in")
