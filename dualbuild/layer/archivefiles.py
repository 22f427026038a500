"""The files the bytes of a tree held in memory lie in: a base's tars, a layer's span of an archive.

dualbuild.layer.memtree keeps where each regular file's bytes are (which of these sources, and
where in it); the emitters read them from here while they write, never all at once.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

from dualbuild.errors import BuildError

_CHUNK = 1 << 20
# Files kept open for reading at most (a copy step's sources are opened as they are read).
_OPEN_FILES = 256


class ArchiveFiles:
    """The uncompressed tars the nodes' contents lie in, opened on first read, closed together.

    A source is a whole file, or a span of one (a layer inside an image archive); a node's
    offset is from the start of its source.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._spans: list[tuple[int, int]] = []
        # What a file a copy step read must still be (size, mtime, inode) when its bytes are.
        self._expected: dict[int, tuple[int, int, int]] = {}
        # Each thread reads through descriptors of its own (the emitters' producers read at the
        # same time): one thread never closes a descriptor another is reading.
        self._local = threading.local()
        self._all: list[dict[int, int]] = []
        self._lock = threading.Lock()

    def add(
        self, path: Path, *, start: int = 0, size: int = -1, expect: tuple[int, int, int] | None = None
    ) -> int:
        """Register a file, or ``size`` bytes of it from ``start``; its index for :attr:`Node.source`.

        ``expect``: the file's size, mtime (ns) and inode when it was looked at; reading it
        later fails if they changed (a context file rewritten during the build).
        """
        self.paths.append(path)
        self._spans.append((start, size))
        if expect is not None:
            self._expected[len(self.paths) - 1] = expect
        return len(self.paths) - 1

    def read(self, source: int, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of source ``source`` (fewer only at its end)."""
        start, length = self._spans[source]
        size = max(0, min(size, length - offset) if length >= 0 else size)
        fd = self._fd(source)
        data = os.pread(fd, size, start + offset)
        while len(data) < size:
            more = os.pread(fd, size - len(data), start + offset + len(data))
            if not more:
                break
            data += more
        return data

    def open(self, source: int) -> BinaryIO:
        """The source as a file of its own (a span of a file reads as if it were the whole)."""
        return io.BufferedReader(_Window(self, source), _CHUNK)

    def size(self, source: int) -> int:
        """How many bytes the source holds."""
        start, length = self._spans[source]
        return length if length >= 0 else os.fstat(self._fd(source)).st_size - start

    def _fd(self, source: int) -> int:
        fds: dict[int, int] | None = getattr(self._local, "fds", None)
        if fds is None:
            fds = self._local.fds = {}
            with self._lock:
                self._all.append(fds)
        fd = fds.pop(source, None)
        if fd is None:
            if len(fds) >= _OPEN_FILES:
                # A copy step's thousands of files: the one read longest ago is closed.
                os.close(fds.pop(next(iter(fds))))
            fd = self._open(source)
        fds[source] = fd  # last: the most recently read
        return fd

    def _open(self, source: int) -> int:
        path, expected = self.paths[source], self._expected.get(source)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if expected is None:
                raise
            raise BuildError(
                f"{path} was removed while the image was being built",
                hint="nothing may modify the build context while dualbuild builds",
            ) from None
        if expected is not None:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != expected:
                os.close(fd)
                raise BuildError(
                    f"{path} changed while the image was being built",
                    hint="nothing may modify the build context while dualbuild builds",
                )
        return fd

    def close(self) -> None:
        """Close every file opened for reading, by any thread (once none reads any more)."""
        with self._lock:
            for fds in self._all:
                for fd in fds.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
                fds.clear()


class _Window(io.RawIOBase):
    """A source of :class:`ArchiveFiles` read as a file: for tarfile and the decompressors."""

    def __init__(self, files: ArchiveFiles, source: int) -> None:
        self._files = files
        self._source = source
        self._size = files.size(source)
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._files.read(self._source, self._at, max(0, min(len(buffer), self._size - self._at)))
        buffer[: len(data)] = data
        self._at += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at
