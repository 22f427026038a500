"""A copy step from the context done on a tree held in memory, with the result ``buildah copy`` gives.

The rules of buildah 1.28's copier (add.go, copier/copier.go), as the extracting build runs it
(``--chown`` always, ``--chmod`` when the step has a mode, every source an absolute path):

* The destination is a directory when there are several sources, it ends with ``/``, or the
  one source is a directory; a missing destination with one file source is that file's new
  name. Symlinks on the way are followed inside the tree; missing directories are made 0755,
  owned as ``--chown`` says, with the time they were made.
* A directory source's contents go into the destination, not the directory itself. Each item
  gets the ``--chown`` owner, its own mode (or ``--chmod``), its mtime rounded to the second,
  its carried xattrs; a symlink is copied as it is; hard links stay links within one source.
  What is in the way is removed first, except a directory met by a directory, which is merged.
  A copied directory's mtime is set after what goes into it; the destination's, and any other
  directory a name is added to or removed from, is the time of the copy.

A shape these rules do not settle (a re-included file under a left-out directory, whose parents
buildah makes up; a top-level symlink to a directory; a destination that is a device) is left to
the extracting build (NotHeld), which also says why a copy fails.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from pathlib import Path

from dualbuild.builder.basetree import NotHeld
from dualbuild.builder.context import ContextCopy
from dualbuild.layer.archivefiles import ArchiveFiles
from dualbuild.layer.memtree import MemoryTree, Node
from dualbuild.layer.tree import EntryType, carried_xattrs, decode_name
from dualbuild.log import log

_NS = 1_000_000_000


def copy_into(
    tree: MemoryTree,
    copy: ContextCopy,
    dest: str,
    *,
    owner: str | None,
    mode: int | None,
    clock: Callable[[], int],
) -> None:
    """Copy what ``copy`` selected from the context to ``dest`` (absolute; a trailing ``/`` kept).

    Raises:
        NotHeld: the copy has a shape left to the extracting build.
    """
    if any(char in dest for char in "*?["):
        raise NotHeld(f"the copy's destination {dest} is a pattern")
    uid, gid = _ids(owner)
    copier = _Copier(tree, tree.files, uid, gid, mode, clock())
    directory, rename = copier.destination(copy, dest)
    for source, entries in copy.by_source():
        copier.source(source, entries, directory, rename)


def _ids(owner: str | None) -> tuple[int, int]:
    """``--chown``'s numbers: ``U:G``, or ``U`` alone for ``U:U`` (0:0 when the step has none)."""
    uid, _, gid = (owner or "0:0").partition(":")
    return int(uid), int(gid or uid)


def _rounded(st: os.stat_result) -> int:
    # Go's archive/tar rounds a header's time to the nearest second, a half up.
    return (st.st_mtime_ns + _NS // 2) // _NS


class _Copier:
    def __init__(
        self, tree: MemoryTree, files: ArchiveFiles, uid: int, gid: int, mode: int | None, now: int
    ) -> None:
        self.tree = tree
        self.files = files
        self.uid = uid
        self.gid = gid
        self.mode = mode
        self.now = now
        # Copied directories and their mtimes, set once everything is in them.
        self.times: list[tuple[str, int]] = []

    def destination(self, copy: ContextCopy, dest: str) -> tuple[str, str | None]:
        """The directory items go into, and the new name of a lone file (or None)."""
        first = copy.sources[0]
        if first.is_symlink() and first.is_dir():
            raise NotHeld(f"the copy's source {first.name} is a symlink to a directory")
        must_be_directory = len(copy.sources) > 1 or dest.endswith("/") or first.is_dir()
        may_be_file = len(copy.sources) == 1 and first.is_file()
        found = self.tree.node(self.tree.resolve(dest))
        if found is None and not must_be_directory and may_be_file:
            return self.directory(posixpath.dirname(dest.rstrip("/")) or "/"), posixpath.basename(dest)
        if found is not None and found.type is EntryType.FILE:
            if must_be_directory:
                raise NotHeld(f"the copy's destination {dest} is a file")
            return self.directory(posixpath.dirname(dest.rstrip("/")) or "/"), posixpath.basename(dest)
        if found is not None and found.type is not EntryType.DIR:
            raise NotHeld(f"the copy's destination {dest} is a {found.type}")
        return self.directory(dest), None

    def directory(self, path: str) -> str:
        """``path`` resolved in the tree, its missing directories made as buildah makes them."""
        resolved = self.tree.resolve(path)
        made = ""
        for part in [part for part in resolved.split("/") if part]:
            made = posixpath.join(made, part)
            node = self.tree.node(made)
            if node is None:
                self.tree.put(made, Node(EntryType.DIR, 0o755, self.uid, self.gid, self.now), touch=self.now)
            elif node.type is not EntryType.DIR:
                raise NotHeld(f"the copy's destination /{made} is not a directory")
        return resolved

    def source(self, source: Path, entries: tuple[Path, ...], directory: str, rename: str | None) -> None:
        """Copy one source (a file, or a directory's contents) into ``directory``."""
        if source.is_symlink() and source.is_dir():
            raise NotHeld(f"the copy's source {source.name} is a symlink to a directory")
        if not source.is_dir():
            # A top-level symlink is followed: its name, the content and mode of what it names.
            real = Path(os.path.realpath(source)) if source.is_symlink() else source
            self.item(real, os.stat(real), posixpath.join(directory, rename or source.name), {})
        else:
            listed = set(entries)
            links: dict[tuple[int, int], str] = {}
            for entry in entries[1:]:
                if entry.parent != source and entry.parent not in listed:
                    raise NotHeld(f"the copy re-includes {entry}, whose parent directory is left out")
                place = posixpath.join(directory, entry.relative_to(source).as_posix())
                self.item(entry, entry.lstat(), place, links)
        # buildah copies each source on its own: its directories' times are set at its end.
        self.restore_times()

    def item(self, host: Path, st: os.stat_result, place: str, links: dict[tuple[int, int], str]) -> None:
        """One item of the copy at ``place``, what was there first removed (a directory merged)."""
        existing = self.tree.node(place)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFSOCK:
            log.warning("copy: skipped the socket %s", host)
            return
        mode = stat.S_IMODE(st.st_mode) if self.mode is None else self.mode
        if kind == stat.S_IFDIR:
            xattrs = carried_xattrs(os.fsencode(host))
            if existing is not None and existing.type is EntryType.DIR:
                # Merged: what it holds stays; its owner, mode and xattrs are the source's.
                node = self.tree.change(place)
                node.mode, node.uid, node.gid = mode, self.uid, self.gid
                node.xattrs = tuple(sorted({**dict(node.xattrs), **dict(xattrs)}.items()))
            else:
                self._clear(place, existing)
                self._add(place, Node(EntryType.DIR, mode, self.uid, self.gid, self.now, xattrs=xattrs))
            self.times.append((place, _rounded(st)))
            return
        self._clear(place, existing)
        if kind == stat.S_IFREG and st.st_nlink > 1:
            first = links.setdefault((st.st_dev, st.st_ino), place)
            if first != place and self.tree.node(first) is not None:
                self.tree.link(place, first, touch=self.now)
                return
        self._add(place, self._node(host, st, kind, mode))

    def _node(self, host: Path, st: os.stat_result, kind: int, mode: int) -> Node:
        mtime = _rounded(st)
        if kind == stat.S_IFLNK:
            target = decode_name(os.readlink(os.fsencode(host)))
            return Node(EntryType.SYMLINK, 0o777, self.uid, self.gid, mtime, link_target=target)
        xattrs = carried_xattrs(os.fsencode(host))
        if kind == stat.S_IFREG:
            source = self.files.add(host, expect=(st.st_size, st.st_mtime_ns, st.st_ino))
            return Node(
                EntryType.FILE, mode, self.uid, self.gid, mtime, size=st.st_size, xattrs=xattrs, source=source
            )
        if kind == stat.S_IFIFO:
            return Node(EntryType.FIFO, mode, self.uid, self.gid, mtime, xattrs=xattrs)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            device = EntryType.CHAR if kind == stat.S_IFCHR else EntryType.BLOCK
            return Node(
                device, mode, self.uid, self.gid, mtime, devmajor=os.major(st.st_rdev),
                devminor=os.minor(st.st_rdev), xattrs=xattrs,
            )  # fmt: skip
        raise NotHeld(f"the copy's source {host} is of file type {oct(kind)}")

    def _clear(self, place: str, existing: Node | None) -> None:
        if existing is not None:
            if self.tree.hard_linked(place):
                # See heldroot._no_hard_links: the result depends on the layer the file lies in.
                raise NotHeld(f"the copy replaces /{place}, which has hard links")
            self.tree.remove(place, touch=self.now)

    def _add(self, place: str, node: Node) -> None:
        try:
            self.tree.put(place, node, touch=self.now)
        except KeyError:
            raise NotHeld(f"the copy writes /{place}, whose parent is not a directory") from None

    def restore_times(self) -> None:
        """Each directory a source copied gets its own mtime, now that its contents are in."""
        for place, mtime in reversed(self.times):
            if self.tree.node(place) is not None:
                self.tree.change(place).mtime = mtime
        self.times.clear()
