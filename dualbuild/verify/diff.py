"""Telling two builds of the same recipe apart: the first entries where their archives differ.

Used by ``dualbuild build --check-reproducible``. Both archives are read as streams, side by
side, so nothing is held in memory or read twice; a member that is itself a tar (a layer,
gzip or not) is compared entry by entry while it is read. Members pair up by position and
by name with every sha256 hex digest left out: a changed layer is stored under another
digest, in the same place, and its differing entries are what is worth naming.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import tarfile
import zlib
from pathlib import Path
from typing import IO, cast

from dualbuild.archive import decompressed_stream

_CHUNK = 1 << 20
_FIELDS = (
    "type",
    "mode",
    "uid",
    "gid",
    "uname",
    "gname",
    "size",
    "mtime",
    "linkname",
    "devmajor",
    "devminor",
)
_DIGEST = re.compile(r"[0-9a-f]{64}")
# What a member that only looks compressed raises on its first read.
_NOT_COMPRESSED = (OSError, EOFError, zlib.error, lzma.LZMAError)


def diff_archives(left: Path, right: Path, *, limit: int = 10) -> list[str]:
    """Up to ``limit`` lines naming the first differing entries of two archives, and how."""
    with left.open("rb") as a, right.open("rb") as b:
        return _diff_streams(decompressed_stream(a), decompressed_stream(b), left.name, limit)


def _paired(name: str) -> str:
    """The name a member pairs by: its digests blanked (blobs, legacy layer ids, link targets)."""
    return _DIGEST.sub("<sha256>", name)


def _diff_streams(left: IO[bytes], right: IO[bytes], where: str, limit: int) -> list[str]:
    found: list[str] = []
    with tarfile.open(fileobj=left, mode="r|") as one_tar, tarfile.open(fileobj=right, mode="r|") as two_tar:
        while len(found) < limit:
            one, two = one_tar.next(), two_tar.next()
            if one is None or two is None:
                if one is not None or two is not None:
                    extra, side = (one, "first") if one is not None else (two, "second")
                    assert extra is not None
                    found.append(f"{where}: {extra.name}: only the {side} archive goes on")
                break
            if _paired(one.name) != _paired(two.name):
                found.append(f"{where}: entry order differs: {one.name!r} vs {two.name!r}")
                break
            changed = [field for field in _FIELDS if _field(one, field) != _field(two, field)]
            if one.pax_headers != two.pax_headers:
                changed.append("pax headers")
            if one.isfile() and two.isfile():
                one_data, two_data = one_tar.extractfile(one), two_tar.extractfile(two)
                assert one_data is not None
                assert two_data is not None
                same, inner = _compare_contents(one_data, two_data, f"{where}:{one.name}", limit - len(found))
                if inner:
                    found.extend(inner)
                    continue
                if not same:
                    changed.append("content")
            if changed:
                detail = ", ".join(
                    f"{f} {getattr(one, f)!r} vs {getattr(two, f)!r}" if f in _FIELDS else f for f in changed
                )
                found.append(f"{where}: {one.name}: {detail}")
    return found[:limit]


def _field(member: tarfile.TarInfo, field: str) -> object:
    value = getattr(member, field)
    return _paired(value) if field == "linkname" else value


def _compare_contents(one: IO[bytes], two: IO[bytes], where: str, limit: int) -> tuple[bool, list[str]]:
    """Whether two members' bytes are equal and, if both are tars, their differing entries."""
    one_raw, two_raw = _Hashing(one), _Hashing(two)
    one_tar, two_tar = _as_tar(cast(IO[bytes], one_raw)), _as_tar(cast(IO[bytes], two_raw))
    inner: list[str] = []
    if one_tar is not None and two_tar is not None:
        try:
            inner = _diff_streams(one_tar, two_tar, where, limit)
        except (tarfile.TarError, *_NOT_COMPRESSED):
            inner = []  # a damaged inner tar: the bytes tell whether the members differ
    return one_raw.drained() == two_raw.drained(), inner


def _as_tar(stream: IO[bytes]) -> IO[bytes] | None:
    """The member's uncompressed bytes, if they are a tar (else None; nothing is lost)."""
    try:
        raw = _Rewindable(stream, 16)
        inner = _Rewindable(decompressed_stream(cast(IO[bytes], raw)), 512)
    except _NOT_COMPRESSED:
        return None
    return cast(IO[bytes], inner) if inner.head[257:262] == b"ustar" else None


class _Hashing(io.RawIOBase):
    """Reads a stream through, hashing every byte once."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self._hasher.update(data)
        return len(data)

    def drained(self) -> str:
        """The sha256 of the whole stream, reading what is left of it."""
        while chunk := self._source.read(_CHUNK):
            self._hasher.update(chunk)
        return self._hasher.hexdigest()


class _Rewindable(io.RawIOBase):
    """A forward-only stream whose first bytes can be read again: what a magic-byte sniff needs."""

    def __init__(self, source: IO[bytes], keep: int) -> None:
        self._source = source
        self.head = b""
        while len(self.head) < keep and (more := source.read(keep - len(self.head))):
            self.head += more
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset > len(self.head) or self._position > len(self.head):
            raise io.UnsupportedOperation("only the first bytes can be read again")
        self._position = offset
        return offset

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._position < len(self.head):
            data = self.head[self._position : self._position + len(buffer)]
        else:
            data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
