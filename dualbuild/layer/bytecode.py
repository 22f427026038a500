"""Timestamp-based ``.pyc`` files kept valid when the mtimes of their sources are clamped.

A timestamp pyc records its source's mtime and size; Python recompiles the module, on every
start when it cannot write the cache, unless both still match (PEP 552). The layers clamp every
mtime to source_date_epoch, so a pyc that a base image or a run step wrote without
SOURCE_DATE_EPOCH would be stale in the image. As the file is streamed, its recorded mtime is
set to the one its source gets in the layer -- only when the pyc matched its source on disk:
a stale pyc stays stale. The header keeps its size, so the file's size and streaming do not
change, and the bytes depend only on the tree and the epoch. Hash-based pycs (what
py_compile writes when SOURCE_DATE_EPOCH is set) record no mtime and pass through untouched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from dualbuild.errors import BuildError
from dualbuild.layer.tree import encode_name, resolve_in_root

# What a file must end with to be looked at: __pycache__/X.TAG[.opt-N].pyc (Python 3.2+), and
# X.pyc or X.pyo beside X.py (Python 2; Python 3 ignores them when the source is there).
BYTECODE_SUFFIXES = (".pyc", ".pyo")
SourceStat = Callable[[str], "tuple[int, int] | None"]
_CACHE_DIRECTORY = "__pycache__"
# Magic numbers (the first two bytes, little-endian; then b"\r\n") by header layout: PEP 552
# (CPython 3.7+ and PyPy3) has a flags word before mtime and size; 3.3-3.6 mtime and size;
# 3.0-3.2 and Python 1.5-2.7 only the mtime.
_FLAGS_FROM = 3392
_SIZE_FROM = 3210
_PYTHON3_FROM = 3000
_PYTHON2 = range(20121, 62212)
_MAGIC_TAIL = b"\r\n"
_UINT32 = 0xFFFFFFFF


def restamp(source_stat: SourceStat, path: str, data: bytes, clamp: int) -> bytes:
    """``data`` with the recorded source mtime moved to the clamped one, if it matched.

    Args:
        source_stat: The mtime and size of a source by its path in the tree (:func:`disk_source_stat`
            for a tree on disk), None when there is no such regular file.
        path: The file's path in the tree (ending with one of :data:`BYTECODE_SUFFIXES`).
        data: The file's content, or for a big file its first chunk (at least the header).
        clamp: The mtime clamp of the layer.

    Returns:
        ``data`` itself, unless it is a timestamp pyc that matches its source, whose mtime
        the clamp changes: then the same bytes with the new mtime in the header.
    """
    fields = _timestamp_fields(data)
    if fields is None:
        return data
    mtime_at, size_at = fields
    source = _source_path(path)
    if source is None:
        return data
    found = source_stat(source)
    if found is None:
        return data
    mtime, size = found
    if _uint32(data, mtime_at) != mtime & _UINT32:
        return data
    if size_at >= 0 and _uint32(data, size_at) != size & _UINT32:
        return data
    clamped = min(max(mtime, 0), clamp)
    if clamped == mtime:
        return data
    return data[:mtime_at] + (clamped & _UINT32).to_bytes(4, "little") + data[mtime_at + 4 :]


def _timestamp_fields(data: bytes) -> tuple[int, int] | None:
    """Offsets of the recorded source mtime and size (-1: none), or None: not a timestamp pyc."""
    if len(data) < 8 or data[2:4] != _MAGIC_TAIL:
        return None
    magic = data[0] | data[1] << 8
    if _FLAGS_FROM <= magic < _PYTHON2.start:
        # Flags 0: timestamp-based; bit 0 set: hash-based; anything else Python refuses.
        return (8, 12) if len(data) >= 16 and _uint32(data, 4) == 0 else None
    if _SIZE_FROM <= magic < _FLAGS_FROM:
        return (4, 8) if len(data) >= 12 else None
    if _PYTHON3_FROM <= magic < _SIZE_FROM or magic in _PYTHON2:
        return 4, -1
    return None


def _source_path(path: str) -> str | None:
    """The source a pyc is compiled from, by Python's own naming rules (source_from_cache)."""
    head, _, name = path.rpartition("/")
    parent, slash, directory = head.rpartition("/")
    if directory != _CACHE_DIRECTORY:
        return path[:-1]
    if not name.endswith(".pyc"):
        return None
    dots = name.count(".")
    if dots == 3:
        optimization = name.rsplit(".", 2)[-2]
        if not optimization.startswith("opt-") or not optimization[4:].isalnum():
            return None
    elif dots != 2:
        return None
    return parent + slash + name.partition(".")[0] + ".py"


def disk_source_stat(root_slash: bytes) -> SourceStat:
    """The source lookup of a tree on disk under ``root_slash`` (a root ending with a slash)."""
    return lambda source: _source_stat(root_slash, source)


def _source_stat(root_slash: bytes, source: str) -> tuple[int, int] | None:
    """The source's mtime in whole seconds and size, as Python sees them inside the image."""
    full = root_slash + encode_name(source)
    try:
        info = os.lstat(full)
        if stat.S_ISLNK(info.st_mode):
            # Python follows the link, and so must the lookup: inside the tree, not the host.
            info = os.stat(resolve_in_root(root_slash, encode_name(source)))
    except (OSError, BuildError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return int(info.st_mtime), info.st_size


def _uint32(data: bytes, at: int) -> int:
    return data[at] | data[at + 1] << 8 | data[at + 2] << 16 | data[at + 3] << 24
