"""Cache directories of run steps (``cache = [...]``): kept between builds on this machine.

Each is a folder under the cache folder's ``mounts/``, named by a digest of its id (by default
the target path) and the image's arch, bind-mounted read-write at its target for the step that
names it. It is never part of a layer or a cache key: a step's result does not depend on what
a cache held. A step holds a lock on it while it runs: shared (``sharing = "shared"``: builds at
once use it together) or exclusive (``"locked"``: one at a time); ``cache prune`` removes only
those nobody holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dualbuild.files import write_atomically
from dualbuild.log import log
from dualbuild.recipe.model import CacheMount, CacheSharing

MOUNTS_DIR = "mounts"


@dataclass(frozen=True, kw_only=True)
class CacheDirectory:
    """One cache directory: its id and arch, where it is, when a step last used it, its size."""

    id: str
    arch: str
    path: Path
    last_used: int
    size: int


def directory_of(cache_dir: Path, mount: CacheMount, arch: str) -> Path:
    """Where the cache ``mount`` of an ``arch`` build lives."""
    name = hashlib.sha256(
        f"{mount.id or mount.target}\0{arch}".encode("utf-8", "surrogateescape")
    ).hexdigest()
    return cache_dir / MOUNTS_DIR / name[:32]


@contextlib.contextmanager
def held(cache_dir: Path, mounts: Sequence[CacheMount], arch: str) -> Iterator[list[tuple[Path, str]]]:
    """The host directory and target of each of a step's cache mounts, locked while the step runs."""
    with contextlib.ExitStack() as stack:
        mounted = []
        for mount in mounts:
            directory = directory_of(cache_dir, mount, arch)
            # Only root's: steps write in these folders as root (setuid files, whatever a tool keeps).
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # A "locked" cache waits for the build that has it, as BuildKit's does.
            lock = _lock(directory, fcntl.LOCK_EX if mount.sharing is CacheSharing.LOCKED else fcntl.LOCK_SH)
            stack.callback(os.close, lock)
            directory.mkdir(exist_ok=True)  # after the lock: a prune may have just removed it
            _note_use(directory, mount, arch)
            mounted.append((directory, mount.target))
        yield mounted


def listing(cache_dir: Path) -> list[CacheDirectory]:
    """Every cache directory on this machine, least recently used first."""
    found = []
    for info_file in sorted((cache_dir / MOUNTS_DIR).glob("*.json")):
        directory = info_file.with_suffix("")
        try:
            info = json.loads(info_file.read_text())
            used = int(info_file.stat().st_mtime)
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or not directory.is_dir():
            continue
        found.append(
            CacheDirectory(
                id=str(info.get("id", "")), arch=str(info.get("arch", "")), path=directory,
                last_used=used, size=_size(directory),
            )
        )  # fmt: skip
    return sorted(found, key=lambda entry: entry.last_used)


def remove(entry: CacheDirectory) -> bool:
    """Remove a cache directory; False when a running step holds it."""
    lock = os.open(_lock_file(entry.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(entry.path, ignore_errors=True)
        if entry.path.exists():
            log.warning("could not remove all of the cache folder %s (%s)", entry.path, entry.id)
            return False  # still listed, so a later prune tries again
        entry.path.with_suffix(".json").unlink(missing_ok=True)
        _lock_file(entry.path).unlink(missing_ok=True)
        return True
    finally:
        os.close(lock)


def _lock(directory: Path, operation: int) -> int:
    """The directory's lock file, open and locked (``operation``: shared or exclusive)."""
    while True:
        lock = os.open(_lock_file(directory), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, operation)
        # A prune that had it while we waited removed the file: the lock we got is on a file
        # nobody else opens any more (the next step would make and lock a new one at once).
        with contextlib.suppress(FileNotFoundError):
            ours, named = os.fstat(lock), os.stat(_lock_file(directory))
            if (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino):
                return lock
        os.close(lock)


def _lock_file(directory: Path) -> Path:
    return directory.with_suffix(".lock")


def _note_use(directory: Path, mount: CacheMount, arch: str) -> None:
    """Record what the directory is for (for ``cache ls``); its mtime says when it was last used."""
    info_file = directory.with_suffix(".json")
    info = json.dumps({"id": mount.id or mount.target, "arch": arch, "target": mount.target}).encode()
    try:
        if info_file.read_bytes() == info:
            now = time.time()
            os.utime(info_file, (now, now))
            return
    except OSError:
        pass
    write_atomically(info_file, info)


def _size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
