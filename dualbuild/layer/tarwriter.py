"""Reproducible tar streams and hashing writers, shared by every emitter.

The same :class:`~dualbuild.layer.tree.Entry` always becomes the same header bytes, whichever
emitter writes it; only the name prefix differs (``""`` for image layers, ``"rootfs/"`` in an
ACI). What makes the bytes stable (image-formats.md §3, appc.md §1.3):

* PAX format, but an extended header only where ustar cannot hold the value: a name or link
  over 100 bytes or not ASCII, an xattr (``SCHILY.xattr.*``, what GNU tar and Go use), a size
  of 8 GiB or more, ids of 2^21 or more. Never a PAX *global* header: actool rejects the
  archive ("unrecognized file path in layout: pax_global_header").
* No atime/ctime records; mtime clamped to SOURCE_DATE_EPOCH; uname/gname empty.
* Devices and FIFOs are headers only and never opened (opening /dev/console hangs).
* File contents are read once (dualbuild.layer.feed) and streamed in 1 MiB chunks, hashed on the
  way, so memory does not grow with file size.

Headers of ordinary entries are packed with :mod:`struct` (5x faster than
``TarInfo.tobuf``, which dominated small-file trees); anything that needs a PAX record goes
through :mod:`tarfile`. Both give the same bytes for the same entry (a property test holds them
to that).
"""

from __future__ import annotations

import hashlib
import queue
import struct
import tarfile
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Protocol

from isal import isal_zlib

from dualbuild.layer.tree import Entry, EntryType

CHUNK = 1 << 20
BLOCK = 512
# ISA-L (igzip) level 2, its default: about 15x faster than zlib level 6 here for ~10% larger
# output. Its bytes are fixed for a given level on every x86-64 host with SSE4.2 (and so are
# image IDs and diff_ids everywhere: they hash the uncompressed tar).
GZIP_LEVEL = 2
_TAR_TYPES = {
    EntryType.FILE: tarfile.REGTYPE,
    EntryType.DIR: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.CHAR: tarfile.CHRTYPE,
    EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
    EntryType.WHITEOUT: tarfile.REGTYPE,
}

# The ustar header as tarfile writes it in PAX format: name; mode, uid, gid, size, mtime
# (together); checksum; typeflag; linkname; magic + version; uname and gname (empty, 64 pad
# bytes); devmajor; devminor; prefix (unused) and padding (167 bytes).
_USTAR = struct.Struct("100s48s8s1s100s8s64x8s8s167x")
_USTAR_MAGIC = b"ustar\x0000"
_NO_DEVICE = b"\0" * 8
# While summing, the checksum field counts as eight spaces (POSIX); the magic is fixed.
_CHECKSUM_FIXED = sum(b" " * 8) + sum(_USTAR_MAGIC)
# Beyond these a value needs a PAX record (tarfile's limits for octal fields).
_MAX_ID = 8**7
_MAX_SIZE = 8**11
# How many 1 MiB buffers a background stage may hold before its writer waits.
_STAGE_DEPTH = 8

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
    ISA-L's output also depends on how the input is cut into ``compress`` calls, so the
    input is re-cut into blocks of exactly :data:`CHUNK` bytes: the same bytes compress the
    same way however the writers above happened to buffer them.
    :meth:`close` writes the trailer; it does not close the sink.
    """

    def __init__(self, sink: Writable, level: int = GZIP_LEVEL) -> None:
        self._sink = sink
        self._compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._pending = bytearray()
        sink.write(b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\xff")

    def write(self, data: Bytes, /) -> int:
        """Compress ``data`` into the sink."""
        length = data.nbytes if isinstance(data, memoryview) else len(data)
        self._size += length
        if not self._pending and length == CHUNK:
            self._compress(data)
            return length
        self._pending += data
        if len(self._pending) >= CHUNK:
            view = memoryview(self._pending)
            whole = len(view) - len(view) % CHUNK
            for start in range(0, whole, CHUNK):
                self._compress(view[start : start + CHUNK])
            view.release()
            del self._pending[:whole]
        return length

    def close(self) -> None:
        """Flush the compressor and write the trailer (CRC-32 and size mod 2^32)."""
        if self._pending:
            self._compress(self._pending)
            self._pending = bytearray()
        self._sink.write(self._compressor.flush())
        self._sink.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))

    def _compress(self, block: Bytes) -> None:
        self._crc = isal_zlib.crc32(block, self._crc)
        compressed = self._compressor.compress(block)
        if compressed:
            self._sink.write(compressed)


class Tee:
    """Write everything to a sink and, when given, to a tap as well (e.g. a signer's stdin)."""

    def __init__(self, sink: Writable, tap: Writable | None) -> None:
        self._sink = sink
        self._tap = tap

    def write(self, data: Bytes, /) -> None:
        """Write ``data`` to both."""
        self._sink.write(data)
        if self._tap is not None:
            self._tap.write(data)


_DONE = object()


class BackgroundStage:
    """A writer whose writes are done by a thread of its own, so two stages use two cores.

    Hashing, ISA-L and file writes release the GIL on large buffers, so e.g. sha512 of an ACI
    in one thread and its compression in another run at the same time. Writes are queued by
    reference: a caller must not change a buffer after writing it (the layer feed never does).
    Use as a context manager; leaving it waits for the queue to drain and re-raises the
    thread's error. After an error in the thread, :meth:`write` raises it too.
    """

    def __init__(self, sink: Writable) -> None:
        self._sink = sink
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_STAGE_DEPTH)
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._work, name="emit-stage", daemon=True)

    def __enter__(self) -> BackgroundStage:
        self._worker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Not cancellable: the thread always drains its queue, so this wait is short, and
        # the thread must be gone before the caller closes the sink under it.
        self._put(_DONE, cancellable=False)
        self._worker.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error

    def write(self, data: Bytes, /) -> None:
        """Queue ``data`` for the stage's thread."""
        if self._error is not None:
            raise self._error
        self._put(data, cancellable=True)

    def _put(self, item: object, *, cancellable: bool) -> None:
        while self._worker.is_alive():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if cancellable:
                    check_cancelled()

    def _work(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:
                try:
                    self._sink.write(item)  # type: ignore[arg-type]
                except BaseException as error:  # noqa: BLE001 - handed to the writer's thread
                    self._error = error


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

    Names are str decoded with surrogateescape (see dualbuild.layer.tree) and are written back as
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


class HeaderPacker:
    """The header block(s) of an entry under each of several name prefixes, in their order.

    Ordinary entries are packed with :mod:`struct`: the fields are made once per entry and
    only the name (and a hardlink's target) change per prefix; the checksum is summed over
    what varies plus a constant for the fixed fields (NUL padding counts zero), so each
    block is packed once. Entries that need a PAX record go through :mod:`tarfile`.
    """

    def __init__(self, prefixes: Sequence[str], clamp: int) -> None:
        assert all(prefix.isascii() for prefix in prefixes), "prefixes are ASCII"
        self._prefixes = [(prefix, prefix.encode(), sum(prefix.encode())) for prefix in prefixes]
        self._clamp = clamp

    def __call__(self, entry: Entry) -> list[bytes]:
        """Every prefix's header of ``entry``."""
        clamp = self._clamp
        fields = _ustar_fields(entry, clamp)
        if fields is None:
            return [tarfile_entry_header(entry, prefix, clamp) for prefix, _, _ in self._prefixes]
        name, link, numbers, typeflag, devmajor, devminor, checksum = fields
        hardlink = entry.type is EntryType.HARDLINK
        headers = []
        for prefix, extra, extra_sum in self._prefixes:
            full_name = extra + name
            target = extra + link if hardlink else link
            if len(full_name) > 100 or len(target) > 100:
                headers.append(tarfile_entry_header(entry, prefix, clamp))
                continue
            total = checksum + extra_sum * (2 if hardlink else 1)
            headers.append(
                _USTAR.pack(
                    full_name, numbers, b"%06o\0 " % total, typeflag, target, _USTAR_MAGIC, devmajor, devminor
                )
            )
        return headers


def _ustar_fields(entry: Entry, clamp: int) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, int] | None:
    """Name, link, numbers, typeflag, devices and the checksum without any prefix.

    None when tarfile would write a PAX record: xattrs, a non-ASCII name or link, ids, size
    or mtime beyond the octal fields (name and link lengths are checked per prefix).
    """
    if entry.xattrs:
        return None
    kind = entry.type
    name = entry.path.encode("utf-8", "surrogateescape")
    if kind is EntryType.DIR:
        name += b"/"  # tarfile's rule: a directory's name ends with a slash
    link = entry.link_target.encode("utf-8", "surrogateescape")
    uid, gid, size, mtime = entry.uid, entry.gid, entry.size, min(entry.mtime, clamp)
    if (
        uid >= _MAX_ID
        or gid >= _MAX_ID
        or size >= _MAX_SIZE
        or mtime >= _MAX_SIZE
        or not (name + link).isascii()
    ):
        return None
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (entry.mode, uid, gid, size, mtime)
    typeflag = _TAR_TYPES[kind]
    checksum = sum(name) + sum(link) + sum(numbers) + typeflag[0] + _CHECKSUM_FIXED
    devmajor = devminor = _NO_DEVICE
    if kind is EntryType.CHAR or kind is EntryType.BLOCK:
        if entry.devmajor >= _MAX_ID or entry.devminor >= _MAX_ID:
            return None
        devmajor, devminor = b"%07o\0" % entry.devmajor, b"%07o\0" % entry.devminor
        checksum += sum(devmajor) + sum(devminor)
    return name, link, numbers, typeflag, devmajor, devminor, checksum


def tarfile_entry_header(entry: Entry, prefix: str, clamp: int) -> bytes:
    """The header of ``entry`` made by :mod:`tarfile` (PAX where needed): the reference bytes."""
    link = prefix + entry.link_target if entry.type is EntryType.HARDLINK else entry.link_target
    return tar_header(
        prefix + entry.path, _TAR_TYPES[entry.type], mode=entry.mode, mtime=min(entry.mtime, clamp),
        size=entry.size, uid=entry.uid, gid=entry.gid, linkname=link, devmajor=entry.devmajor,
        devminor=entry.devminor, xattrs=entry.xattrs,
    )  # fmt: skip


def padding(size: int) -> bytes:
    """Zero bytes that fill ``size`` up to a whole tar block."""
    return bytes(-size % BLOCK)
