"""A layered image's tree: its layers applied in order, as ``docker load`` applies them.

Rules (image-formats.md §4.1, moby's UnpackLayer): ``.wh.NAME`` removes NAME (and what is
below it) from the layers beneath; ``.wh..wh..opq`` removes everything in its directory the
layers beneath put there; an entry replaces what was at its path, a directory below it too
unless both are directories. The merged tree is held as entries (metadata and content
digests, never contents), so memory grows with the number of paths, not with their bytes.

Hard links are resolved to the file they share an inode with: a layered image and a squashed
tree may name a different path of the same inode first, and both hold the same files then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from dualbuild.layer.tree import EntryType, encode_name
from dualbuild.verify.entries import ArchivedEntry

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


class AppliedLayers:
    """The tree that applying layers one after the other gives."""

    def __init__(self) -> None:
        self._entries: dict[str, ArchivedEntry] = {}
        self._children: dict[str, set[str]] = {"": set()}

    def apply(self, layer: Iterable[ArchivedEntry]) -> None:
        """Apply one layer's entries, in their order."""
        added: set[str] = set()
        for entry in layer:
            path = entry.path.strip("/")
            if not path or path == ".":
                continue
            parent, _, name = path.rpartition("/")
            if name == OPAQUE_WHITEOUT:
                for child in list(self._children.get(parent, ())):
                    if _join(parent, child) not in added:
                        self._remove(_join(parent, child))
                continue
            if name.startswith(WHITEOUT_PREFIX):
                self._remove(_join(parent, name[len(WHITEOUT_PREFIX) :]))
                continue
            existing = self._entries.get(path)
            if existing is not None and not (existing.type is EntryType.DIR and entry.type is EntryType.DIR):
                self._remove(path)
            if entry.type is EntryType.HARDLINK:
                entry = self._resolved(entry)
            self._entries[path] = dataclasses.replace(entry, path=path)
            self._children.setdefault(parent, set()).add(name)
            if entry.type is EntryType.DIR:
                self._children.setdefault(path, set())
            added.add(path)

    def entries(self) -> Iterator[ArchivedEntry]:
        """The merged tree, parents before children, siblings sorted by name bytes (the walk's order)."""
        for path in sorted(self._entries, key=_walk_order):
            yield self._entries[path]

    def _resolved(self, link: ArchivedEntry) -> ArchivedEntry:
        target = self._entries.get(link.link_target.strip("/"))
        if target is None:
            return link
        return dataclasses.replace(target, path=link.path)

    def _remove(self, path: str) -> None:
        if self._entries.pop(path, None) is None:
            return
        parent, _, name = path.rpartition("/")
        self._children.get(parent, set()).discard(name)
        for child in self._children.pop(path, set()):
            self._remove(_join(path, child))


def resolve_hardlinks(entries: Iterable[ArchivedEntry]) -> Iterator[ArchivedEntry]:
    """The entries with every hard link shown as the file it links to (see the module's note)."""
    files: dict[str, ArchivedEntry] = {}
    for entry in entries:
        if entry.type is EntryType.FILE:
            files[entry.path] = entry
        elif entry.type is EntryType.HARDLINK and entry.link_target in files:
            entry = dataclasses.replace(files[entry.link_target], path=entry.path)
        yield entry


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _walk_order(path: str) -> list[bytes]:
    return [encode_name(part) for part in path.split("/")]
