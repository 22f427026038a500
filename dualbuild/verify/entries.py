"""The entries of a tar read back: each file's content hashed, two streams compared by path."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from dualbuild.layer.tree import EntryType
from dualbuild.verify.configs import IdFiles

_CHUNK = 1 << 20
_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}
_XATTR = "SCHILY.xattr."


@dataclass(frozen=True, kw_only=True)
class ArchivedEntry:
    """One entry as an archive records it, with its content hashed."""

    path: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str = ""
    link_target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it."""

    def __init__(self, source: IO[bytes], algorithm: str) -> None:
        super().__init__()
        self._source = source
        self.hasher = hashlib.new(algorithm)

    def readable(self) -> bool:
        """Always: it is a reader."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Read into ``buffer``, hashing what was read."""
        data = self._source.read(len(buffer))
        self.hasher.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> str:
        """Hash the rest of the stream and return the hex digest."""
        while data := self._source.read(_CHUNK):
            self.hasher.update(data)
        return self.hasher.hexdigest()


def read_entries(
    source: IO[bytes], *, prefix: str = "", ids: IdFiles | None = None
) -> Iterator[ArchivedEntry]:
    """Stream the entries of a tar, hashing each file's content; names lose ``prefix``.

    Entries outside ``prefix`` (an ACI's ``manifest`` and the ``rootfs`` directory itself)
    are not yielded. ``ids`` keeps /etc/passwd and /etc/group as they pass.
    """
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if prefix:
                if not name.startswith(prefix):
                    continue
                name = name[len(prefix) :]
            kind = _TYPES.get(member.type)
            if kind is None:
                raise ValueError(f"{member.name}: unsupported tar entry type {member.type!r}")
            digest = ""
            if kind is EntryType.FILE:
                content = tar.extractfile(member)
                hasher = hashlib.sha256()
                kept: list[bytes] | None = [] if ids is not None and ids.wants(name, member.size) else None
                if content is not None:
                    while data := content.read(_CHUNK):
                        hasher.update(data)
                        if kept is not None:
                            kept.append(data)
                digest = hasher.hexdigest()
                if ids is not None and kept is not None:
                    ids.add_file(name, b"".join(kept))
            elif kind is EntryType.SYMLINK and ids is not None:
                ids.add_link(name, member.linkname)
            link = member.linkname
            if kind is EntryType.HARDLINK:
                link = link.removeprefix("./").removeprefix(prefix)
            xattrs = tuple(
                sorted(
                    (key[len(_XATTR) :], value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith(_XATTR)
                )
            )
            yield ArchivedEntry(
                path=name,
                type=kind,
                # Go's archive/tar (docker save, buildah) writes the file type bits into the mode too.
                mode=member.mode & 0o7777,
                uid=member.uid,
                gid=member.gid,
                size=member.size if kind is EntryType.FILE else 0,
                sha256=digest,
                link_target=link,
                devmajor=member.devmajor if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
                devminor=member.devminor if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
                xattrs=xattrs,
            )


def compare_entries(
    left: Iterator[ArchivedEntry], right: Iterator[ArchivedEntry], names: tuple[str, str]
) -> list[str]:
    """Differences between two entry streams, matched by path (order may differ)."""
    differences: list[str] = []
    pending: tuple[dict[str, ArchivedEntry], dict[str, ArchivedEntry]] = ({}, {})
    sides = (left, right)
    exhausted = [False, False]
    while not all(exhausted):
        for side in (0, 1):
            if exhausted[side]:
                continue
            entry = next(sides[side], None)
            if entry is None:
                exhausted[side] = True
                continue
            other = pending[1 - side].pop(entry.path, None)
            if other is None:
                pending[side][entry.path] = entry
            else:
                pair = (entry, other) if side == 0 else (other, entry)
                differences.extend(_differ(pair[0], pair[1], names))
    for side in (0, 1):
        for path in pending[side]:
            differences.append(f"/{path}: only in the {names[side]}")
    return differences


_COMPARED = ("type", "mode", "uid", "gid", "size", "sha256", "link_target", "devmajor", "devminor", "xattrs")


def _differ(left: ArchivedEntry, right: ArchivedEntry, names: tuple[str, str]) -> list[str]:
    found = []
    for field in _COMPARED:
        a, b = getattr(left, field), getattr(right, field)
        if a != b:
            found.append(
                f"/{left.path}: {field} differs: {names[0]} {_show(field, a)}, {names[1]} {_show(field, b)}"
            )
    return found


def _show(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return oct(value)
    if isinstance(value, EntryType):
        return value.value
    return repr(value)
