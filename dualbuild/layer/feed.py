"""The layer tar of a tree, made once and handed to every output that needs it.

Every format holds the same entries in the same order (dualbuild.layer.tree); only the name prefix
differs (``""`` in image layers, ``"rootfs/"`` in an ACI). So one producer walks the entries,
opens and reads each file once, builds each entry's header once per prefix, and hands the
same buffers to every subscriber. Each subscriber (one per emitter) consumes them in its own
thread: the hashing, compression and writing release the GIL, so they overlap the producer's
per-entry Python work and each other. With one reader per emitter instead, two emitters cost
twice the reads and headers, and their threads mostly waited for each other's GIL.

A timestamp ``.pyc`` gets the clamped mtime of its source in its header as it is read
(dualbuild.layer.bytecode), so the clamp does not leave Python's caches stale in the image.

Buffers are ~1 MiB (small writes collected; big files in 1 MiB reads) and each subscriber's
queue holds a few of them, so memory does not grow with the tree. A subscriber that fails is
abandoned (the others go on); a producer that fails (a file changed under it, a cancel) hands
its error to every subscriber.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import stat
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from dualbuild.errors import BuildError
from dualbuild.layer.bytecode import BYTECODE_SUFFIXES, SourceStat, disk_source_stat, restamp
from dualbuild.layer.tarwriter import (
    BLOCK,
    CHUNK,
    Bytes,
    Cancelled,
    HeaderPacker,
    Writable,
    check_cancelled,
    padding,
)
from dualbuild.layer.tree import Entry, EntryType, Tree, TreeContents, encode_name

# Files up to this size are read in one call and go through the buffer with the headers.
_SMALL_FILE = 64 << 10
# Entries handled per pass (see write_entries): their small files hold at most 16 MiB.
_BATCH = 256
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_END_OF_ARCHIVE = bytes(2 * BLOCK)
# Buffers a subscriber may have pending before the producer waits for it.
_QUEUE_DEPTH = 8
_POLL_SECONDS = 0.2


class LayerSource(Protocol):
    """Where an emitter gets its layer: the tree, and its tar (entries + end marker)."""

    @property
    def tree(self) -> Tree:
        """The tree the layer is made of."""

    def write_to(self, sink: Writable) -> None:
        """Write the whole layer tar to ``sink``."""


class DirectLayer:
    """A layer written by the calling thread, for an emitter that runs alone."""

    def __init__(self, tree: Tree, *, prefix: str, mtime_clamp: int) -> None:
        self._tree = tree
        self._prefix = prefix
        self._clamp = mtime_clamp

    @property
    def tree(self) -> Tree:
        """The tree the layer is made of."""
        return self._tree

    def write_to(self, sink: Writable) -> None:
        """Walk the tree and write its tar to ``sink``."""
        write_entries(self._tree, [_Fanout(self._prefix, sink.write)], self._clamp)


def as_layer(source: Tree | LayerSource, *, prefix: str, mtime_clamp: int) -> LayerSource:
    """A layer source for an emitter: given a bare tree, one the emitter writes itself."""
    if isinstance(source, Tree):
        return DirectLayer(source, prefix=prefix, mtime_clamp=mtime_clamp)
    return source


class LayerFeed:
    """One producer of the tree's tar for any number of subscribers, each with its prefix.

    Subscribe every consumer first, then call :meth:`run` in a thread of its own. Every
    subscriber must either consume its whole layer (:meth:`Subscription.write_to`) or
    :meth:`Subscription.abandon` it, or the producer waits for it until cancelled.
    """

    def __init__(self, tree: Tree, *, mtime_clamp: int) -> None:
        self._tree = tree
        self._clamp = mtime_clamp
        self._subscriptions: dict[str, list[Subscription]] = {}

    def subscribe(self, prefix: str) -> Subscription:
        """A new consumer of the layer with names under ``prefix``."""
        subscription = Subscription(self._tree)
        self._subscriptions.setdefault(prefix, []).append(subscription)
        return subscription

    def run(self) -> None:
        """Produce the layer for every subscriber; any error goes to them, never out of here."""
        everyone = [s for group in self._subscriptions.values() for s in group]
        try:
            fanouts = [_Fanout(prefix, _deliverer(group)) for prefix, group in self._subscriptions.items()]
            write_entries(self._tree, fanouts, self._clamp)
        except BaseException as error:  # noqa: BLE001 - each subscriber raises it in its own thread
            for subscription in everyone:
                # A cancelled consumer stops on its own; the others still get the error.
                with contextlib.suppress(Cancelled):
                    subscription.put(_Failed(error))
            return
        for subscription in everyone:
            subscription.put(_END)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Subscription:
    """One consumer's view of a :class:`LayerFeed`: its buffers arrive through a queue."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._abandoned = threading.Event()

    @property
    def tree(self) -> Tree:
        """The tree the layer is made of."""
        return self._tree

    def write_to(self, sink: Writable) -> None:
        """Write every buffer of the layer to ``sink``; raise the producer's error if it failed."""
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                check_cancelled()
                sink.write(item)  # type: ignore[arg-type]
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop receiving: the producer skips this subscriber from now on."""
        self._abandoned.set()
        # Unblock a producer waiting for room in this queue.
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def put(self, item: object) -> None:
        """Hand the consumer an item, waiting for room unless it has stopped."""
        while not self._abandoned.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                check_cancelled()


def _deliverer(group: Sequence[Subscription]) -> Callable[[Bytes], None]:
    def deliver(data: Bytes) -> None:
        for subscription in group:
            subscription.put(data)

    return deliver


class _Fanout:
    """The bytes of one prefix's tar: small pieces collected into ~1 MiB buffers, then delivered.

    Pieces are kept in a list and joined once per buffer: growing two bytearrays in turn made
    every append a reallocation and copy (5x slower with two prefixes, measured). A delivered
    buffer is never touched again, so subscribers may keep it while the producer goes on.
    """

    def __init__(self, prefix: str, deliver: Callable[[Bytes], object]) -> None:
        self.prefix = prefix
        self.deliver = deliver
        self._pieces: list[Bytes] = []
        self._size = 0

    def add(self, header: Bytes, data: Bytes = b"", tail: Bytes = b"") -> None:
        # One call per entry: per-call overhead is a visible share of a 100k-file export.
        pieces = self._pieces
        pieces.append(header)
        if data:
            pieces.append(data)
            pieces.append(tail)
        self._size += len(header) + len(data) + len(tail)
        if self._size >= CHUNK:
            self.flush()

    def add_large(self, data: bytes) -> None:
        self.flush()
        self.deliver(data)

    def flush(self) -> None:
        if self._pieces:
            self.deliver(b"".join(self._pieces))
            self._pieces = []
            self._size = 0


def write_entries(tree: Tree, fanouts: Sequence[_Fanout], clamp: int) -> None:
    """Write every entry of ``tree`` and the end-of-archive marker to every fanout.

    Entries go in batches, each in three passes: read the small files, make the headers, hand
    both to the fanouts. Doing one kind of work at a time took about 11% less CPU than all
    three per entry (files100k, same bytes): the interpreter and the kernel keep their caches
    warm for the one job.

    Raises:
        BuildError: a file changed since the snapshot (its size, its type).
        Cancelled: the emit was cancelled.
    """
    root_slash = os.path.join(os.fsencode(tree.root), b"")
    held = tree.contents
    sources = held.source_stat if held is not None else disk_source_stat(root_slash)
    headers_of = HeaderPacker([fanout.prefix for fanout in fanouts], clamp)
    # Every entry's mtime went through both clamps; a pyc's source does here too.
    clamp = min(clamp, tree.source_date_epoch)
    entries = iter(tree.entries)
    while batch := list(itertools.islice(entries, _BATCH)):
        check_cancelled()
        if held is not None:
            contents = [
                _held_small(held, sources, entry, clamp) if _is_small_file(entry) else None for entry in batch
            ]
        else:
            contents = [
                _read_small(root_slash, sources, entry, clamp) if _is_small_file(entry) else None
                for entry in batch
            ]
        headers = [headers_of(entry) for entry in batch]
        for entry, data, entry_headers in zip(batch, contents, headers, strict=True):
            if data is not None:
                tail = padding(entry.size)
                for fanout, header in zip(fanouts, entry_headers, strict=True):
                    fanout.add(header, data, tail)
                continue
            for fanout, header in zip(fanouts, entry_headers, strict=True):
                fanout.add(header)
            if entry.type is EntryType.FILE and held is not None:
                _copy_held(held, sources, entry, fanouts, clamp)
            elif entry.type is EntryType.FILE:
                _copy_large(root_slash, sources, entry, fanouts, clamp)
    for fanout in fanouts:
        fanout.add(_END_OF_ARCHIVE)
        fanout.flush()


def _is_small_file(entry: Entry) -> bool:
    return entry.type is EntryType.FILE and entry.size <= _SMALL_FILE


def _open(source: bytes, entry: Entry) -> int:
    # O_NOFOLLOW and O_NONBLOCK guard against the path having become a symlink or a FIFO
    # since the snapshot.
    try:
        return os.open(source, _OPEN_FLAGS)
    except OSError as exc:
        raise _changed(entry, exc.strerror or str(exc)) from exc


def _read_small(root_slash: bytes, sources: SourceStat, entry: Entry, clamp: int) -> bytes:
    """A small file's content, read with one ``read`` of size + 1; a pyc's restamped.

    A regular file returns less than asked only at its end, so getting the extra byte means
    it grew. Each syscall here also hands the GIL to the emitter threads and waits to get it
    back, so a small file gets no ``fstat``: what it would catch (a directory, a FIFO, a
    device, another size) fails the read or its count.
    """
    fd = _open(root_slash + encode_name(entry.path), entry)
    try:
        size = entry.size
        try:
            data = os.read(fd, size + 1)
            while len(data) < size:
                more = os.read(fd, size + 1 - len(data))
                if not more:
                    raise _changed(entry, "it shrank while being read")
                data += more
        except OSError as exc:
            raise _changed(entry, exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    if len(data) > size:
        raise _changed(entry, "it grew while being read")
    if entry.path.endswith(BYTECODE_SUFFIXES):
        return restamp(sources, entry.path, data, clamp)
    return data


def _held_small(held: TreeContents, sources: SourceStat, entry: Entry, clamp: int) -> bytes:
    """A small file's content from a tree held in memory; a pyc's restamped."""
    data = held.read(entry.path, 0, entry.size)
    if len(data) != entry.size:
        raise _changed(entry, "its archive is shorter than its entry says")
    if entry.path.endswith(BYTECODE_SUFFIXES):
        return restamp(sources, entry.path, data, clamp)
    return data


def _copy_held(
    held: TreeContents, sources: SourceStat, entry: Entry, fanouts: Sequence[_Fanout], clamp: int
) -> None:
    """A big file of a tree held in memory, in 1 MiB reads to every fanout."""
    bytecode = entry.path.endswith(BYTECODE_SUFFIXES)
    offset = 0
    while offset < entry.size:
        check_cancelled()
        chunk = held.read(entry.path, offset, min(entry.size - offset, CHUNK))
        if not chunk:
            raise _changed(entry, "its archive is shorter than its entry says")
        if bytecode:
            chunk, bytecode = restamp(sources, entry.path, chunk, clamp), False
        for fanout in fanouts:
            fanout.add_large(chunk)
        offset += len(chunk)
    tail = padding(entry.size)
    for fanout in fanouts:
        fanout.add(tail)


def _copy_large(
    root_slash: bytes, sources: SourceStat, entry: Entry, fanouts: Sequence[_Fanout], clamp: int
) -> None:
    """Stream exactly ``entry.size`` bytes of a big file in 1 MiB reads to every fanout.

    A big pyc's header is in its first read, and is restamped there.
    """
    fd = _open(root_slash + encode_name(entry.path), entry)
    bytecode = entry.path.endswith(BYTECODE_SUFFIXES)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            raise _changed(entry, "it is no longer the regular file of the snapshot")
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        remaining = entry.size
        while remaining:
            check_cancelled()
            chunk = os.read(fd, min(remaining, CHUNK))
            if not chunk:
                raise _changed(entry, "it shrank while being read")
            if bytecode:
                chunk, bytecode = restamp(sources, entry.path, chunk, clamp), False
            for fanout in fanouts:
                fanout.add_large(chunk)
            remaining -= len(chunk)
        if os.read(fd, 1):
            raise _changed(entry, "it grew while being read")
    finally:
        os.close(fd)
    tail = padding(entry.size)
    for fanout in fanouts:
        fanout.add(tail)


def _changed(entry: Entry, why: str) -> BuildError:
    return BuildError(
        f"/{entry.path} changed while the image was being written: {why}",
        hint="nothing may modify the image tree while dualbuild exports it",
    )
