"""A tree held in memory: a base's entries read from its tar layers, the file steps done on them.

A stage of file steps only (write, mkdir, symlink, remove, a copy from the context) on a tarball
or an image archive needs the base's entries, not its files on disk: extracting ~170 MB of a
Debian tree costs seconds of system time, writing the image from it one read. So the base's tars
are only indexed: every path's metadata is kept here, a regular file's bytes stay where they lie
(an archive or a context file, and the offset: dualbuild.layer.archivefiles) until the emitters
read them, and a file a write step makes holds its bytes here.

The tree answers what the mounted root answers the rest of dualbuild, by the same rules: the
entries of the whole-tree walk (dualbuild.layer.tree: parents first, siblings sorted by name
bytes, a second name of a regular file a hard link to its first), and a layer as the difference
of two trees (dualbuild.layer.diff: changed entries with their parents, whiteouts, an opaque one
where a directory kept none of its entries). A node stands for an inode: the paths of a hard
link share one. :meth:`MemoryTree.snapshot` gives a tree that shares every node with this one
until one of them changes it (copied then), so a layer's two trees cost a copy of the tables,
and a node both still share is unchanged without being compared, as one inode of the store is.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dualbuild.errors import BuildError
from dualbuild.layer.archivefiles import ArchiveFiles
from dualbuild.layer.diff import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from dualbuild.layer.tree import Entry, EntryType, Tree, encode_name

# A memory tree's Tree.root: never a directory, so nothing reads a tree on disk in its place.
HELD_ROOT = Path("/dev/null")
# The kernel's limit (MAXSYMLINKS), as dualbuild.layer.tree.resolve_in_root.
_MAX_SYMLINKS = 40
_CHUNK = 1 << 20
# No second name: mode, size and owner are the inode's, xattrs travel with the first entry.
_LINKABLE = EntryType.FILE


@dataclass(slots=True, eq=False)
class Node:
    """One inode of the tree.

    Attributes:
        type: What it is (never HARDLINK or WHITEOUT: a hard link is a second path to a node).
        mode: Permission bits with setuid, setgid and sticky.
        uid: Numeric owner.
        gid: Numeric group.
        mtime: Modification time in whole seconds, not clamped.
        size: A regular file's length.
        link_target: A symlink's target.
        devmajor: A device's major number.
        devminor: A device's minor number.
        xattrs: The carried extended attributes, sorted by name.
        data: The content of a file a step wrote; None for one whose content lies in an archive.
        source: Which of the tree's archive files holds the content (-1: none).
        offset: Where in that file the content starts.
        links: How many paths name a regular file.
    """

    type: EntryType
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    link_target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    data: bytes | None = None
    source: int = -1
    offset: int = 0
    links: int = 1


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


class MemoryTree:
    """The nodes of a tree by path (``""`` is the root; paths ``/``-separated, no leading ``/``)."""

    def __init__(self, files: ArchiveFiles) -> None:
        self.files = files
        self._nodes: dict[str, Node] = {"": Node(EntryType.DIR, 0o755, 0, 0, 0)}
        self._children: dict[str, dict[str, None]] = {"": {}}
        # The nodes this tree may change in place: those no snapshot shares.
        self._owned: set[int] = set()

    # --- looking ----------------------------------------------------------------------------

    def node(self, path: str) -> Node | None:
        """The node at ``path`` (symlinks not followed), or None."""
        return self._nodes.get(path)

    def names(self, directory: str) -> list[str]:
        """The names in a directory, sorted by their bytes."""
        return sorted(self._children.get(directory, {}), key=encode_name)

    def hard_linked(self, path: str) -> bool:
        """Whether ``path``, or anything below it, is a regular file with other names too."""
        node = self._nodes.get(path)
        if node is None:
            return False
        if node.type is _LINKABLE:
            return node.links > 1
        return any(self.hard_linked(_join(path, name)) for name in self._children.get(path, {}))

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """``path`` with the tree's symlinks followed inside it, as layer.tree.resolve_in_root does.

        Raises:
            BuildError: too many levels of symbolic links.
        """
        parts = [part for part in path.split("/") if part and part != "."]
        resolved: list[str] = []
        followed = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            node = self._nodes.get("/".join([*resolved, part]))
            if node is not None and node.type is EntryType.SYMLINK and (follow_last or parts):
                followed += 1
                if followed > _MAX_SYMLINKS:
                    raise BuildError(f"{path}: too many levels of symbolic links in the image")
                if node.link_target.startswith("/"):
                    resolved = []
                parts = [p for p in node.link_target.split("/") if p and p != "."] + parts
                continue
            resolved.append(part)
        return "/".join(resolved)

    def content(self, node: Node, offset: int = 0, size: int = -1) -> bytes:
        """A regular file's bytes (``size`` of them from ``offset``; all by default)."""
        if size < 0:
            size = node.size - offset
        if node.data is not None:
            return node.data[offset : offset + size]
        if node.source < 0:
            return b""
        return self.files.read(node.source, node.offset + offset, min(size, node.size - offset))

    # --- changing ---------------------------------------------------------------------------

    def put(self, path: str, node: Node, *, touch: int | None = None) -> None:
        """Make ``node`` the one at ``path``; its parent must be a directory of the tree.

        A directory put over a directory keeps what is in it (a layer's directory entry over a
        lower one); anything else first removes what was there. ``touch``: the time the parent
        directory's mtime gets, when a name is added to it (as the kernel sets it).

        Raises:
            KeyError: the parent is not a directory of the tree.
        """
        parent = _parent(path)
        if parent not in self._children or self._nodes[parent].type is not EntryType.DIR:
            raise KeyError(parent)
        existing = self._nodes.get(path)
        keeps = existing is not None and existing.type is EntryType.DIR and node.type is EntryType.DIR
        if existing is not None and not keeps:
            self.remove(path)
        if existing is None or not keeps:
            self._children[parent][_name(path)] = None
            if touch is not None:
                self.change(parent).mtime = touch
        self._nodes[path] = node
        self._owned.add(id(node))
        if node.type is EntryType.DIR and path not in self._children:
            self._children[path] = {}

    def link(self, path: str, target: str, *, touch: int | None = None) -> None:
        """A hard link: ``path`` names the regular file at ``target`` too (what was at ``path`` goes).

        Raises:
            KeyError: ``target`` is not a regular file, or the parent of ``path`` is no directory.
        """
        node = self._nodes.get(target)
        if node is None or node.type is not _LINKABLE:
            raise KeyError(target)
        if self._nodes.get(path) is node:
            return
        node = self.change(target)
        node.links += 1
        self.put(path, node, touch=touch)

    def remove(self, path: str, *, touch: int | None = None) -> None:
        """Remove ``path`` and everything below it; ``touch``: the parent's new mtime."""
        node = self._nodes.pop(path, None)
        if node is None:
            return
        self._children[_parent(path)].pop(_name(path), None)
        if touch is not None:
            self.change(_parent(path)).mtime = touch
        self._unlink(node)
        for name in list(self._children.pop(path, {})):
            self._drop(_join(path, name))

    def _drop(self, path: str) -> None:
        node = self._nodes.pop(path)
        self._unlink(node)
        for name in self._children.pop(path, {}):
            self._drop(_join(path, name))

    def _unlink(self, node: Node) -> None:
        if node.type is _LINKABLE and node.links > 1:
            # The inode's other names stay; it has one name fewer.
            other = next((p for p, n in self._nodes.items() if n is node), None)
            if other is not None:
                self.change(other).links -= 1

    def change(self, path: str) -> Node:
        """The node at ``path``, made this tree's own first (copied if a snapshot shares it).

        Raises:
            KeyError: nothing is at ``path``.
        """
        node = self._nodes[path]
        if id(node) in self._owned:
            return node
        fresh = copy.copy(node)
        if node.type is _LINKABLE and node.links > 1:
            for other, found in self._nodes.items():
                if found is node:
                    self._nodes[other] = fresh
        else:
            self._nodes[path] = fresh
        self._owned.add(id(fresh))
        return fresh

    def snapshot(self) -> MemoryTree:
        """A tree with the same nodes, shared until either tree changes one."""
        other = MemoryTree(self.files)
        other._nodes = dict(self._nodes)
        other._children = {path: dict(names) for path, names in self._children.items()}
        # Neither may change a shared node in place from now on.
        self._owned = set()
        return other

    # --- as the rest of dualbuild sees a tree -----------------------------------------------

    def tree(self, source_date_epoch: int) -> Tree:
        """The whole tree's entries, as layer.tree.snapshot gives those of a mounted root."""
        walk = functools.partial(self._walk, source_date_epoch)
        return Tree(
            root=HELD_ROOT, entries=_Walked(walk), source_date_epoch=source_date_epoch,
            contents=_Contents(self),
        )  # fmt: skip

    def _walk(self, source_date_epoch: int) -> Iterator[Entry]:
        first_names: dict[int, str] = {}
        stack: list[Iterator[str]] = [iter([_join("", name) for name in self.names("")])]
        while stack:
            path = next(stack[-1], None)
            if path is None:
                stack.pop()
                continue
            node = self._nodes[path]
            yield _entry(path, node, source_date_epoch, first_names)
            if node.type is EntryType.DIR:
                stack.append(iter([_join(path, name) for name in self.names(path)]))

    def changes(self, lower: MemoryTree | None, source_date_epoch: int) -> Tree:
        """The layer that turns ``lower`` (None: nothing) into this tree, as layer.diff.changes gives it."""
        if lower is None:
            return self.tree(source_date_epoch)

        def walk() -> Iterator[Entry]:
            return _Differ(lower, self, source_date_epoch).walk()

        return Tree(
            root=HELD_ROOT, entries=_Walked(walk), source_date_epoch=source_date_epoch,
            contents=_Contents(self),
        )  # fmt: skip


class _Walked:
    """A memory tree's entries, walked anew each time they are read: never all held at once.

    The trees are not changed once the build hands them over, so every walk gives the same.
    """

    def __init__(self, walk: Callable[[], Iterator[Entry]]) -> None:
        self._walk = walk

    def __iter__(self) -> Iterator[Entry]:
        return self._walk()


def _clamped(mtime: int, source_date_epoch: int) -> int:
    return min(max(mtime, 0), source_date_epoch)


def _entry(path: str, node: Node, source_date_epoch: int, first_names: dict[int, str]) -> Entry:
    """The entry layer.tree.make_entry gives for this node at ``path``."""
    kind, size, link_target, xattrs = node.type, node.size, node.link_target, node.xattrs
    if kind is _LINKABLE and node.links > 1:
        first = first_names.setdefault(id(node), path)
        if first != path:
            kind, size, link_target, xattrs = EntryType.HARDLINK, 0, first, ()
    return Entry(
        path=path,
        type=kind,
        # A symlink's own mode is always 0777 on Linux, whatever the archive said.
        mode=0o777 if kind is EntryType.SYMLINK else node.mode & 0o7777,
        uid=node.uid,
        gid=node.gid,
        size=size if kind is EntryType.FILE else 0,
        mtime=_clamped(node.mtime, source_date_epoch),
        link_target=link_target,
        devmajor=node.devmajor,
        devminor=node.devminor,
        xattrs=xattrs,
    )


class _Differ:
    """layer.diff's walk over two memory trees: the same entries in the same order."""

    def __init__(self, lower: MemoryTree, upper: MemoryTree, source_date_epoch: int) -> None:
        self.lower = lower
        self.upper = upper
        self.sde = source_date_epoch
        self.first_names: dict[int, str] = {}

    def walk(self) -> Iterator[Entry]:
        # Each level: (directory path, its node or None for the root, written yet, the work).
        stack: list[list[object]] = [["", None, True, self._items("", True)]]
        while stack:
            directory, _, _, items = stack[-1]
            item = next(items, None)  # type: ignore[call-overload]
            if item is None:
                stack.pop()
                continue
            name, is_whiteout, lower_has_dir = item
            path = _join(directory, name)  # type: ignore[arg-type]
            if is_whiteout:
                yield from self._parents(stack)
                yield Entry(path=path, type=EntryType.WHITEOUT, mode=0, uid=0, gid=0)
                continue
            upper = self.upper._nodes[path]
            lower = self.lower._nodes.get(path) if lower_has_dir else None
            changed = self._changed(lower, upper)
            if upper.type is EntryType.DIR:
                same_kind = lower is not None and lower.type is EntryType.DIR
                stack.append([path, upper, False, self._items(path, same_kind)])
                if changed:
                    yield from self._parents(stack)
                continue
            if changed:
                yield from self._parents(stack)
                yield _entry(path, upper, self.sde, self.first_names)

    def _parents(self, stack: list[list[object]]) -> Iterator[Entry]:
        for level in stack:
            path, node, written, _ = level
            if written or node is None:
                continue
            level[2] = True
            yield _entry(path, node, self.sde, self.first_names)  # type: ignore[arg-type]

    def _items(self, directory: str, lower_has_dir: bool) -> Iterator[tuple[str, bool, bool]]:
        upper = self.upper.names(directory)
        items = [(name, False, lower_has_dir) for name in upper]
        if lower_has_dir:
            below = self.lower.names(directory)
            gone = set(below) - set(upper)
            if gone and len(gone) == len(below):
                items.append((OPAQUE_WHITEOUT, True, False))
            else:
                items.extend((WHITEOUT_PREFIX + name, True, False) for name in gone)
            items.sort(key=lambda item: (encode_name(item[0]), item[1]))
        return iter(items)

    def _changed(self, lower: Node | None, upper: Node) -> bool:
        """layer.diff._changed for two nodes; one node both trees share is one unchanged inode."""
        if lower is None or lower.type is not upper.type:
            return True
        if lower is upper:
            return False
        if (lower.mode, lower.uid, lower.gid, _clamped(lower.mtime, self.sde)) != (
            upper.mode, upper.uid, upper.gid, _clamped(upper.mtime, self.sde)
        ):  # fmt: skip
            return True
        if upper.type is not EntryType.DIR and (
            lower.size != upper.size
            or lower.links != upper.links
            or (lower.devmajor, lower.devminor) != (upper.devmajor, upper.devminor)
        ):
            return True
        if upper.type is EntryType.SYMLINK:
            return lower.link_target != upper.link_target
        if lower.xattrs != upper.xattrs:
            return True
        return upper.type is EntryType.FILE and not self._same_content(lower, upper)

    def _same_content(self, lower: Node, upper: Node) -> bool:
        offset = 0
        while offset < upper.size:
            size = min(_CHUNK, upper.size - offset)
            if self.lower.content(lower, offset, size) != self.upper.content(upper, offset, size):
                return False
            offset += size
        return True


class _Contents:
    """What the emitters read of a memory tree: file bytes, a pyc's source, /etc/passwd."""

    def __init__(self, tree: MemoryTree) -> None:
        self._tree = tree

    def read(self, path: str, offset: int, size: int) -> bytes:
        node = self._tree.node(path)
        if node is None or node.type is not EntryType.FILE:
            raise BuildError(f"/{path} is not a regular file of the image tree")
        return self._tree.content(node, offset, size)

    def source_stat(self, path: str) -> tuple[int, int] | None:
        node = self._file_at(path)
        return (node.mtime, node.size) if node is not None else None

    def file_bytes(self, path: str, limit: int) -> bytes | None:
        node = self._file_at(path)
        return self._tree.content(node, 0, min(limit, node.size)) if node is not None else None

    def _file_at(self, path: str) -> Node | None:
        """The regular file ``path`` leads to inside the tree (symlinks followed), or None."""
        try:
            node = self._tree.node(self._tree.resolve(path))
        except BuildError:
            return None
        return node if node is not None and node.type is EntryType.FILE else None
