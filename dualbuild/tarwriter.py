"""Reproducible tar streams, hashing writers and atomic output files, shared by every emitter.

The same :class:`~dualbuild.tree.Entry` always becomes the same header bytes, whichever
emitter writes it; only the name prefix differs (``""`` for image layers, ``"rootfs/"`` in an
ACI). What makes the bytes stable (image-formats.md §3, appc.md §1.3):

* PAX format, but an extended header only where ustar cannot hold the value: a name or link
  over 100 bytes or not ASCII, an xattr (``SCHILY.xattr.*``, what GNU tar and Go use), a size
  of 8 GiB or more, ids of 2^21 or more. Never a PAX *global* header: actool rejects the
  archive ("unrecognized file path in layout: pax_global_header").
* No atime/ctime records; mtime clamped to SOURCE_DATE_EPOCH; uname/gname empty.
* Devices and FIFOs are headers only and never opened (opening /dev/console hangs).
* File contents are streamed in 1 MiB chunks and hashed on the way, so no file of the tree is
  read twice and memory does not grow with file size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import struct
import tarfile
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO, Protocol

from isal import isal_zlib

from dualbuild.errors import BuildError
from dualbuild.tree import Entry, EntryType, Tree

CHUNK = 1 << 20
BLOCK = 512
# ISA-L (igzip) level 2, its default: about 15x faster than zlib level 6 here for ~10% larger
# output. Its bytes are fixed for a given level on every x86-64 host with SSE4.2 (and so are
# image IDs and diff_ids everywhere: they hash the uncompressed tar).
GZIP_LEVEL = 2
# Files up to this size are read in one call and go through the write buffer with headers.
_SMALL_FILE = 64 << 10
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TAR_TYPES = {
    EntryType.FILE: tarfile.REGTYPE,
    EntryType.DIR: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.CHAR: tarfile.CHRTYPE,
    EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
}

Bytes = bytes | bytearray | memoryview


class Writable(Protocol):
    """Anything with ``write``: a file, a :class:`HashingWriter`, a :class:`GzipWriter`."""

    def write(self, data: Bytes, /) -> object:
        """Write all of ``data``."""


# --- cancellation ---------------------------------------------------------------------------


class Cancelled(Exception):
    """The emit was cancelled because the build was interrupted."""


_cancel_event: ContextVar[threading.Event | None] = ContextVar("dualbuild_emit_cancel", default=None)


def set_cancel_event(event: threading.Event) -> None:
    """Make writers in the current context stop with :class:`Cancelled` once ``event`` is set."""
    _cancel_event.set(event)


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if this context's emit was cancelled."""
    event = _cancel_event.get()
    if event is not None and event.is_set():
        raise Cancelled("cancelled")


# --- writers --------------------------------------------------------------------------------


class HashingWriter:
    """Pass writes through to a sink (or nowhere) while hashing and counting them."""

    def __init__(self, sink: Writable | None, *algorithms: str) -> None:
        self._sink = sink
        self._hashes = {name: hashlib.new(name) for name in algorithms}
        self.size = 0

    def write(self, data: Bytes, /) -> int:
        """Hash ``data`` and forward it."""
        for hasher in self._hashes.values():
            hasher.update(data)
        if self._sink is not None:
            self._sink.write(data)
        length = data.nbytes if isinstance(data, memoryview) else len(data)
        self.size += length
        return length

    def hexdigest(self, algorithm: str) -> str:
        """Hex digest of everything written so far."""
        return self._hashes[algorithm].hexdigest()

    def digest(self, algorithm: str = "sha256") -> str:
        """OCI-style digest, e.g. ``sha256:<hex>``."""
        return f"{algorithm}:{self.hexdigest(algorithm)}"


class GzipWriter:
    """A gzip stream into a sink whose bytes depend only on the input (``gzip -n`` style).

    Written by hand on zlib rather than with ``gzip.GzipFile`` so every header byte is ours:
    mtime 0, no file name, XFL 0, OS 255 ("unknown", so the build host does not leak in).
    :meth:`close` writes the trailer; it does not close the sink.
    """

    def __init__(self, sink: Writable, level: int = GZIP_LEVEL) -> None:
        self._sink = sink
        self._compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        sink.write(b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\xff")

    def write(self, data: Bytes, /) -> int:
        """Compress ``data`` into the sink."""
        length = data.nbytes if isinstance(data, memoryview) else len(data)
        self._crc = isal_zlib.crc32(data, self._crc)
        self._size += length
        compressed = self._compressor.compress(data)
        if compressed:
            self._sink.write(compressed)
        return length

    def close(self) -> None:
        """Flush the compressor and write the trailer (CRC-32 and size mod 2^32)."""
        self._sink.write(self._compressor.flush())
        self._sink.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``dest`` that becomes ``dest`` only on success.

    The temporary name is ``.NAME.tmp-PID`` in the same directory, so the final rename is
    atomic. On success the file is fsynced, renamed and the directory fsynced; on any
    exception (including KeyboardInterrupt) it is removed: no partial artifact remains.
    The file is opened read-write because the docker emitter patches and re-reads it.

    Raises:
        BuildError: The directory cannot be written.
    """
    temporary = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        # A leftover of a killed run that had the same PID.
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise BuildError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    file = os.fdopen(fd, "w+b", buffering=CHUNK)
    try:
        yield file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        os.replace(temporary, dest)
        _fsync_directory(dest.parent)
    except BaseException:
        file.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(file: BinaryIO) -> str:
    """Hex sha256 of a whole open file, read from the start in big chunks."""
    file.flush()
    file.seek(0)
    hasher = hashlib.sha256()
    while data := file.read(CHUNK):
        check_cancelled()
        hasher.update(data)
    return hasher.hexdigest()


# --- tar ------------------------------------------------------------------------------------


def tar_header(
    name: str,
    kind: bytes,
    *,
    mode: int,
    mtime: int,
    size: int = 0,
    uid: int = 0,
    gid: int = 0,
    linkname: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: tuple[tuple[str, bytes], ...] = (),
) -> bytes:
    """The header block(s) of one entry: ustar, preceded by a PAX 'x' header only if needed.

    Names are str decoded with surrogateescape (see dualbuild.tree) and are written back as
    the original bytes; a PAX record that is not UTF-8 makes tarfile add
    ``hdrcharset=BINARY``, which GNU tar, Go and Python all read.
    """
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.size = size
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.linkname = linkname
    info.devmajor, info.devminor = devmajor, devminor
    # Insertion order is record order: keep it sorted (Entry.xattrs already is).
    info.pax_headers = {
        f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape") for key, value in xattrs
    }
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    """Zero bytes that fill ``size`` up to a whole tar block."""
    return bytes(-size % BLOCK)


class TarStream:
    """Write a tar archive to a sink, entry by entry, with nothing held in memory.

    Small writes (headers, small files) are collected into a 1 MiB buffer so that the hash and
    gzip layers below see few, large writes; big files go through in 1 MiB chunks.

    Args:
        sink: Where the tar bytes go.
        prefix: Put before every tree path and hardlink target (``"rootfs/"`` for an ACI).
        mtime_clamp: Upper bound for every header's mtime (SOURCE_DATE_EPOCH).
    """

    def __init__(self, sink: Writable, *, prefix: str = "", mtime_clamp: int) -> None:
        self._sink = sink
        self._prefix = prefix
        self._clamp = mtime_clamp
        self._buffer = bytearray()
        self._chunk = bytearray(CHUNK)

    def add_tree(self, tree: Tree) -> None:
        """Write every entry of ``tree``, in order."""
        for entry in tree.entries:
            self.add_entry(tree, entry)

    def add_entry(self, tree: Tree, entry: Entry) -> None:
        """Write one tree entry, streaming a regular file's content from ``tree.root``."""
        check_cancelled()
        link = entry.link_target
        if entry.type is EntryType.HARDLINK:
            # rkt links to join(root, Linkname): the target needs the prefix too (appc.md §1.3).
            link = self._prefix + link
        self._write(
            tar_header(
                self._prefix + entry.path,
                _TAR_TYPES[entry.type],
                mode=entry.mode,
                mtime=min(entry.mtime, self._clamp),
                size=entry.size,
                uid=entry.uid,
                gid=entry.gid,
                linkname=link,
                devmajor=entry.devmajor,
                devminor=entry.devminor,
                xattrs=entry.xattrs,
            )
        )
        if entry.type is EntryType.FILE:
            self._copy_file(tree.source_path(entry), entry)
            self._write(padding(entry.size))

    def add_bytes(self, name: str, data: bytes, *, mtime: int, mode: int = 0o644) -> None:
        """Write a regular file with the given content, owned by 0:0."""
        self._write(tar_header(name, tarfile.REGTYPE, mode=mode, mtime=mtime, size=len(data)))
        self._write(data)
        self._write(padding(len(data)))

    def add_directory(self, name: str, *, mtime: int, mode: int = 0o755) -> None:
        """Write a directory entry owned by 0:0."""
        self._write(tar_header(name, tarfile.DIRTYPE, mode=mode, mtime=mtime))

    def finish(self) -> None:
        """Write the end-of-archive marker (two zero blocks) and flush the buffer."""
        self._write(bytes(2 * BLOCK))
        self.flush()

    def flush(self) -> None:
        """Hand buffered bytes to the sink."""
        if self._buffer:
            self._sink.write(self._buffer)
            self._buffer = bytearray()

    def _write(self, data: Bytes) -> None:
        if len(self._buffer) + len(data) > CHUNK:
            self.flush()
        if len(data) >= CHUNK:
            self._sink.write(data)
        else:
            self._buffer += data

    def _copy_file(self, source: bytes, entry: Entry) -> None:
        """Stream exactly ``entry.size`` bytes of a regular file.

        O_NOFOLLOW and O_NONBLOCK guard against the path having become a symlink or a FIFO
        since the snapshot; a changed size is an error rather than a corrupt archive.
        """
        try:
            fd = os.open(source, _OPEN_FLAGS)
        except OSError as exc:
            raise _changed(entry, exc.strerror or str(exc)) from exc
        with open(fd, "rb", buffering=0) as file:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                raise _changed(entry, "it is no longer the regular file of the snapshot")
            if entry.size <= _SMALL_FILE:
                data = b""
                while len(data) < entry.size:
                    more = file.read(entry.size - len(data))
                    if not more:
                        raise _changed(entry, "it shrank while being read")
                    data += more
                self._write(data)
            else:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self.flush()
                self._stream(file, entry)
            if file.read(1):
                raise _changed(entry, "it grew while being read")

    def _stream(self, file: io.FileIO, entry: Entry) -> None:
        view = memoryview(self._chunk)
        remaining = entry.size
        while remaining:
            check_cancelled()
            count = file.readinto(view[: min(remaining, CHUNK)])
            if not count:
                raise _changed(entry, "it shrank while being read")
            self._sink.write(view[:count])
            remaining -= count


def _changed(entry: Entry, why: str) -> BuildError:
    return BuildError(
        f"/{entry.path} changed while the image was being written: {why}",
        hint="nothing may modify the image tree while dualbuild exports it",
    )
