"""Telling two builds of the same recipe apart: the first entries where their archives differ.

Used by ``dualbuild build --check-reproducible``. Archives are read as streams, in order;
a member that is itself a tar (a layer, an ACI's content) is compared entry by entry.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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


def _members(stream: IO[bytes]) -> Iterator[tuple[tarfile.TarInfo, bytes | None, str]]:
    """Each member with its content hash; small members' bytes are kept to look inside them."""
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            digest, data = "", None
            if member.isfile():
                source = archive.extractfile(member)
                hasher = hashlib.sha256()
                kept = io.BytesIO() if member.size <= 64 << 20 else None
                while source is not None and (chunk := source.read(_CHUNK)):
                    hasher.update(chunk)
                    if kept is not None:
                        kept.write(chunk)
                digest = hasher.hexdigest()
                data = kept.getvalue() if kept is not None else None
            yield member, data, digest


def _is_tar(data: bytes) -> bool:
    head = decompressed_stream(io.BytesIO(data)).read(262)
    return len(head) == 262 and head[257:262] == b"ustar"


def diff_archives(left: Path, right: Path, *, limit: int = 10) -> list[str]:
    """Up to ``limit`` lines naming the first differing entries of two archives, and how."""
    with left.open("rb") as a, right.open("rb") as b:
        return _diff_streams(decompressed_stream(a), decompressed_stream(b), left.name, limit)


def _diff_streams(left: IO[bytes], right: IO[bytes], where: str, limit: int) -> list[str]:
    found: list[str] = []
    pairs = zip(_members(left), _members(right), strict=False)
    for (one, one_data, one_hash), (two, two_data, two_hash) in pairs:
        if len(found) >= limit:
            break
        if one.name != two.name:
            found.append(f"{where}: entry order differs: {one.name!r} vs {two.name!r}")
            break
        changed = [f for f in _FIELDS if getattr(one, f) != getattr(two, f)]
        if one.pax_headers != two.pax_headers:
            changed.append("pax headers")
        if one_hash != two_hash:
            if one_data is not None and two_data is not None and _is_tar(one_data) and _is_tar(two_data):
                inner = _diff_streams(
                    decompressed_stream(io.BytesIO(one_data)),
                    decompressed_stream(io.BytesIO(two_data)),
                    f"{where}:{one.name}",
                    limit - len(found),
                )
                found.extend(inner)
                continue
            changed.append("content")
        if changed:
            detail = ", ".join(
                f"{f} {getattr(one, f)!r} vs {getattr(two, f)!r}" if f in _FIELDS else f for f in changed
            )
            found.append(f"{where}: {one.name}: {detail}")
    return found
