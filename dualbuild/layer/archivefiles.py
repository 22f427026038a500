"""The files the bytes of a tree held in memory lie in: a base's tars, a layer's span of an archive.

dualbuild.layer.memtree keeps where each regular file's bytes are (which of these sources, and
where in it); the emitters read them from here while they write, never all at once.
"""

from __future__ import annotations

import contextlib
import io
import os
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
        self._fds: dict[int, int] = {}

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
        if length >= 0:
            size = max(0, min(size, length - offset))
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
        fd = self._fds.get(source)
        if fd is not None:
            return fd
        if len(self._fds) >= _OPEN_FILES:
            # A copy step's thousands of files: the one read longest ago is closed.
            oldest = next(iter(self._fds))
            os.close(self._fds.pop(oldest))
        fd = os.open(self.paths[source], os.O_RDONLY | os.O_CLOEXEC)
        expected = self._expected.get(source)
        if expected is not None:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != expected:
                os.close(fd)
                raise BuildError(
                    f"{self.paths[source]} changed while the image was being built",
                    hint="nothing may modify the build context while dualbuild builds",
                )
        self._fds[source] = fd
        return fd

    def close(self) -> None:
        """Close every file opened for reading."""
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


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
        data = self._files.read(self._source, self._at, min(len(buffer), self._size - self._at))
        buffer[: len(data)] = data
        self._at += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at
