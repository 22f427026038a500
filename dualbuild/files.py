"""Files: one way to hash a file, one way to write one atomically.

**Hashing.** :func:`file_sha256` is the digest of a file on disk. It is remembered with the
file's stamp (device, inode, size, mtime, ctime: :func:`file_stamp`), and a report carries the
stamps of the big files a build hashed (:func:`known_digests`, :func:`remember_digests`), so a
later command — an unchanged rebuild, ``publish`` — hashes no multi-GB file the build already
hashed. :func:`sha256_stream` is the loop underneath, for a stream (an artifact read back while
it is written).

**Writing.** Every file dualbuild writes appears under its name only when it is whole: it is
written as ``.tmp-PID-NAME`` in the same directory, made durable, and renamed. An interrupted
or failed command leaves no partial file (and a killed one leaves a name that says whose it
was). :func:`atomic_output` streams (artifacts, site files), :func:`write_atomically` writes
bytes (reports, indexes), :func:`atomic_path` lends the temporary name to a tool that writes
the file itself (gpg, mmdebstrap). Given ``dir_fd``, an open directory, :func:`atomic_output`
and :func:`atomic_path` work by name in it and look no path up again (a site where links may
be planted is walked to with ``O_NOFOLLOW``: dualbuild.publish.dirsite).

Making a few hundred MB durable costs the disk's time: a single fsync after the last byte
waited ~0.5-0.8 s for the 420 MB of a files100k export (Docker + ACI) while the other core
idled. So a thread flushes a streamed file every 50 ms while it is written
(:func:`_early_writeback`) and the final fsync finds almost nothing left (200 MB written at
100 MB/s: 0.44-0.52 s without, 0.003-0.009 s with; ``sync_file_range``, which only starts
writeback, left 0.1-0.27 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from dualbuild.errors import BuildError

# Read and write buffers of whole files.
BUFFER = 1 << 20
# How often an output being written is flushed to the disk.
_WRITEBACK_SECONDS = 0.05
# Smaller files hash in less time than reading their record back would save.
_WORTH_REMEMBERING = 1 << 20

# --- hashing ---------------------------------------------------------------------------------

Stamp = tuple[int, int, int, int, int]
# [path, dev, ino, size, mtime_ns, ctime_ns, sha256], as a report stores it.
DigestRecord = tuple[str, int, int, int, int, int, str]


def file_stamp(path: Path) -> Stamp:
    """What changes whenever a file's content may have: device, inode, size, mtime, ctime.

    ctime cannot be set from user space and moves on every write, chmod or rename, so an
    unchanged stamp means unchanged content (the rule git's index and make rely on).
    """
    info = path.stat()
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


# Digests known for a path at a stamp: hashed in this process, computed while the file was
# written (remember_digest), or taken from the last report (remember_digests).
_known_digests: dict[tuple[str, Stamp], str] = {}


def sha256_stream(
    stream: BinaryIO,
    *,
    also: Callable[[bytes], object] | None = None,
    between: Callable[[], None] | None = None,
) -> str:
    """Hex sha256 of what is left of ``stream``, read in big chunks.

    Args:
        stream: Read from its current position to its end.
        also: Gets every chunk too, in order (a signer reading the same bytes).
        between: Called before each chunk (a cancellation check).
    """
    hasher = hashlib.sha256()
    while True:
        if between is not None:
            between()
        data = stream.read(BUFFER)
        if not data:
            return hasher.hexdigest()
        hasher.update(data)
        if also is not None:
            also(data)


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, streamed; remembered while its stamp is unchanged."""
    key = (os.fspath(path.absolute()), file_stamp(path))
    known = _known_digests.get(key)
    if known is None:
        with path.open("rb") as handle:
            known = _known_digests[key] = sha256_stream(handle)
    return known


def remember_digest(path: Path, sha256: str) -> None:
    """Record a digest computed elsewhere (e.g. while the file was written) for its stamp."""
    _known_digests[(os.fspath(path.absolute()), file_stamp(path))] = sha256


def known_digests() -> tuple[DigestRecord, ...]:
    """Remembered digests of big files that still hold, for the report.

    A record whose file is gone or has another stamp now is dropped, so the list does not
    grow from build to build.
    """
    records: list[DigestRecord] = []
    for (path, stamp), digest in sorted(_known_digests.items()):
        if stamp[2] < _WORTH_REMEMBERING:
            continue
        try:
            current = file_stamp(Path(path))
        except OSError:
            continue
        if current == stamp:
            records.append((path, *stamp, digest))
    return tuple(records)


def remember_digests(records: tuple[DigestRecord, ...]) -> None:
    """Take back the records of :func:`known_digests` (from a report)."""
    for path, dev, ino, size, mtime, ctime, digest in records:
        _known_digests[(path, (dev, ino, size, mtime, ctime))] = digest


# --- writing ---------------------------------------------------------------------------------


def scratch_prefix(kind: str) -> str:
    """The name prefix of a temporary folder of this process: ``dualbuild-KIND-PID-``.

    The PID says whose it is, so that what a killed process left can be found (dualbuild.leftovers).
    """
    return f"dualbuild-{kind}-{os.getpid()}-"


@contextlib.contextmanager
def scratch_directory(kind: str, directory: Path | None = None) -> Iterator[Path]:
    """A temporary folder named by its kind and our PID, removed after the block."""
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(kind), dir=directory) as path:
        yield Path(path)


def temporary_name(dest: Path) -> Path:
    """Where ``dest`` is written before it is whole: ``.tmp-PID-NAME`` beside it.

    The name keeps ``dest``'s suffix (mmdebstrap picks its output format from it) and says
    which process wrote it.
    """
    return dest.with_name(f".tmp-{os.getpid()}-{dest.name}")


@contextlib.contextmanager
def atomic_path(dest: Path, *, dir_fd: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``dest`` for a tool to write; renamed to ``dest`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed.

    Args:
        dest: The file to write.
        dir_fd: An open directory ``dest`` is a bare name in: the temporary name, the rename
            and the directory's fsync then go through it, and no path is looked up again (a
            directory swapped for a symbolic link meanwhile is not followed).
    """
    if dir_fd is not None and len(dest.parts) != 1:
        raise ValueError(f"{dest}: with dir_fd, a name in that directory")
    temporary = temporary_name(dest)
    # A leftover of a killed run that had the same PID.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    try:
        yield temporary
        os.replace(temporary, dest, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if dir_fd is None:
            _fsync_directory(dest.parent)
        else:
            os.fsync(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


@contextlib.contextmanager
def atomic_output(dest: Path, *, mode: int | None = None, dir_fd: int | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``dest`` that becomes ``dest`` only on success.

    On success the file is fsynced, renamed and the directory fsynced; on any exception
    (including KeyboardInterrupt) it is removed. The file is opened read-write because the
    docker emitter patches and re-reads it.

    Args:
        dest: The file to write.
        mode: Permission bits to give it (default: 0644 less the umask).
        dir_fd: An open directory ``dest`` is a bare name in (see :func:`atomic_path`).

    Raises:
        BuildError: The directory cannot be written.
    """
    with atomic_path(dest, dir_fd=dir_fd) as temporary:
        try:
            fd = os.open(
                temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                dir_fd=dir_fd,
            )  # fmt: skip
        except OSError as exc:
            raise BuildError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "w+b", buffering=BUFFER) as file:
            if mode is not None:
                os.fchmod(fd, mode)
            with _early_writeback(fd):
                yield file
            file.flush()
            os.fsync(fd)


def write_atomically(dest: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write a small file whole: ``dest`` holds either its old content or ``data``.

    Raises:
        BuildError: The directory cannot be written.
    """
    with atomic_path(dest) as temporary:
        try:
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise BuildError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as file:
                if mode is not None:
                    os.fchmod(fd, mode)
                file.write(data)
                file.flush()
                os.fsync(fd)
        except OSError as exc:  # a full disk, a quota: the old content stays, the temporary goes
            raise BuildError(f"cannot write {dest}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _early_writeback(fd: int) -> Iterator[None]:
    """While the block runs, ``fdatasync`` the file every 50 ms from a thread of its own.

    A writeback error is reported once per open file: if this thread is the one to see it,
    it is raised when the block ends (the final fsync would not report it again).

    Raises:
        OSError: a flush failed.
    """
    stop = threading.Event()
    errors: list[OSError] = []

    def work() -> None:
        while not stop.wait(_WRITEBACK_SECONDS):
            try:
                os.fdatasync(fd)
            except OSError as error:
                errors.append(error)
                return

    thread = threading.Thread(target=work, name="emit-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
