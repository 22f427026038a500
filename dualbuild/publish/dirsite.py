"""An ACI discovery site that is a directory, written so that no link planted in it is followed.

Whoever may write into the site may plant symbolic links there, and publish may run as root:
a page linked to a root-only file must not have that file's content copied into a
world-readable page, a linked ``images/`` must not take the ACI outside the site. So every
operation walks from the root one directory at a time (``O_DIRECTORY | O_NOFOLLOW``) and
acts on names in the open directory (``dir_fd``): a linked directory on the way is refused
(:class:`PublishError`, naming it), the last name is replaced or removed, never followed,
and read through only when it is a tag's link to a file beside it (what publish writes). The
root is the user's choice and may be a link: it is resolved once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from dualbuild import run
from dualbuild.errors import PublishError
from dualbuild.files import atomic_output, atomic_path
from dualbuild.leftovers import owner_pid
from dualbuild.log import log


class DirSite:
    """A directory a web server serves; files appear atomically with mode 0644 (or narrower)."""

    def __init__(self, root: Path) -> None:
        self.given = root
        self.root = Path(os.path.realpath(root))
        # Directories this run made (for prune): in the site, and the root and above it.
        self._created: list[str] = []
        self._made_above: list[Path] = []
        self._swept: set[str] = set()

    @property
    def location(self) -> str:
        """The directory."""
        return str(self.given)

    def fetch(self, path: str, dest: Path) -> bool:
        """Copy the file at ``path`` to ``dest``; False when there is none.

        A link at ``path`` is read through only when it names a regular file in the same
        directory (a tag's link to its version); any other is not followed, and publish
        replaces it.

        Raises:
            PublishError: a directory on the way is a symbolic link.
        """
        with self._directory(path, make=False) as (parent, name):
            if parent is None:
                return False
            fd = _open_file(parent, name)
            if fd is None:
                try:
                    text = os.readlink(name, dir_fd=parent)
                except OSError:
                    return False  # gone, or no link: a FIFO, a socket, a directory
                fd = _open_file(parent, text) if _bare_name(text) else None
                if fd is None:
                    log.warning("%s is a link to %s: not read, and replaced", self._shown(path), text)
                    return False
            with os.fdopen(fd, "rb") as data, dest.open("wb") as out:
                shutil.copyfileobj(data, out)
        return True

    def put(self, path: str, source: Path, content_type: str) -> None:  # noqa: ARG002 - files have no type
        """Write ``source`` at ``path`` under a temporary name, then rename it into place.

        The rename replaces whatever ``path`` is, a symbolic link included, never writing
        through it. The new file is 0644, or narrower when the file it replaces was (with
        that file's group): a page's content carries over, and so must who may read it.

        Raises:
            PublishError: a directory on the way is a symbolic link.
        """
        with self._directory(path, make=True) as (parent, name):
            assert parent is not None
            # Web servers run as another user: the files must be world-readable.
            mode, group = 0o644, None
            with contextlib.suppress(FileNotFoundError):
                old = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISLNK(old.st_mode) and _bare_name(text := os.readlink(name, dir_fd=parent)):
                    # A tag's link: its content was read through it (fetch), so its mode counts.
                    old = os.stat(text, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISREG(old.st_mode):
                    mode, group = 0o644 & old.st_mode, old.st_gid
            with source.open("rb") as data, atomic_output(Path(name), mode=mode, dir_fd=parent) as out:
                if group is not None:
                    with contextlib.suppress(PermissionError):  # not one of our groups
                        os.fchown(out.fileno(), -1, group)
                shutil.copyfileobj(data, out)

    @property
    def links(self) -> bool:
        """A directory holds symbolic links: a tag is a link to its version, not a copy."""
        return True

    def symlink(self, path: str, text: str) -> None:
        """Create the link under a temporary name, then rename it over ``path``.

        Raises:
            PublishError: a directory on the way is a symbolic link.
        """
        with (
            self._directory(path, make=True) as (parent, name),
            atomic_path(Path(name), dir_fd=parent) as temporary,
        ):
            os.symlink(text, temporary, dir_fd=parent)

    def readlink(self, path: str) -> str | None:
        """What the link at ``path`` reads; None when it is a file or absent.

        Raises:
            PublishError: a directory on the way is a symbolic link.
        """
        with self._directory(path, make=False) as (parent, name):
            if parent is None:
                return None
            try:
                return os.readlink(name, dir_fd=parent)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as error:
                if error.errno == errno.EINVAL:  # not a symbolic link
                    return None
                raise

    def delete(self, path: str) -> None:
        """Remove ``path`` (the link itself when it is one).

        Raises:
            PublishError: a directory on the way is a symbolic link.
        """
        with self._directory(path, make=False) as (parent, name):
            if parent is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=parent)

    def prune(self) -> None:
        """Remove the directories this run created, when empty again (a link is left alone)."""
        for directory in reversed(self._created):
            try:
                with self._directory(directory, make=False) as (parent, name):
                    if parent is not None:
                        os.rmdir(name, dir_fd=parent)
            except (OSError, PublishError):
                continue
        for above in reversed(self._made_above):
            with contextlib.suppress(OSError):
                above.rmdir()

    @contextlib.contextmanager
    def _directory(self, path: str, *, make: bool) -> Iterator[tuple[int | None, str]]:
        """The open directory ``path``'s last name is in, and that name; None when it is missing.

        With ``make``, missing directories are made (and remembered for prune), and what
        killed publishes left there (``.tmp-PID-NAME``) is removed once per directory.

        Raises:
            PublishError: a directory on the way is a symbolic link, or ``path`` is no site path.
        """
        *parents, name = path.split("/")
        if any(part in ("", ".", "..") for part in (*parents, name)):
            raise PublishError(f"{path!r} is not a path inside the site {self.location}")
        if make:
            # Above the site's root: the user's own directories, links and all.
            for directory in reversed([d for d in (self.root, *self.root.parents) if not d.exists()]):
                directory.mkdir()
                self._made_above.append(directory)
        fd: int | None = None
        try:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.root, _DIRECTORY)
            for depth, part in enumerate(parents):
                if fd is None:
                    break
                child = self._enter(fd, part, "/".join(parents[: depth + 1]), make=make)
                os.close(fd)
                fd = child
            walked = "/".join(parents)
            if fd is not None and make and walked not in self._swept:
                # Half-written files of a publish killed there (.tmp-PID-NAME) are served otherwise.
                _reclaim_partial_files(fd, self._shown(walked))
                self._swept.add(walked)
            yield fd, name
        finally:
            if fd is not None:
                os.close(fd)

    def _enter(self, parent: int, part: str, walked: str, *, make: bool) -> int | None:
        """Open directory ``part`` of ``parent``, made if ``make``; None when there is none."""
        if make:
            with contextlib.suppress(FileExistsError):  # mkdirat follows no link either
                os.mkdir(part, dir_fd=parent)
                self._created.append(walked)
        try:
            return os.open(part, _DIRECTORY, dir_fd=parent)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                raise
            if error.errno != errno.ENOENT and _is_link(parent, part):
                raise PublishError(
                    f"{self._shown(walked)} is a symbolic link; publish follows no link inside "
                    "the site, so that nothing lands or is read outside it",
                    hint=f"make it a directory (the site {self.location} itself may be a link)",
                ) from None
            if make:
                raise
            return None  # missing, or a file where a directory would be: nothing there

    def _shown(self, path: str) -> str:
        return os.path.join(self.location, path) if path else self.location


# Directories inside a site are opened one name at a time, never through a link.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _bare_name(text: str) -> bool:
    """Whether a link's text names an entry of its own directory (how a tag links its version)."""
    return bool(text) and "/" not in text and text not in (".", "..")


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _open_file(parent: int, name: str) -> int | None:
    """The regular file ``name`` in ``parent``, open for reading; None for a link or anything else.

    ``O_NONBLOCK``: a FIFO planted there must not hang publish.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return None
        raise
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    return None


def _reclaim_partial_files(directory: int, shown: str) -> None:
    """Remove the ``.tmp-PID-NAME`` files of dead publishes in an open site directory.

    As dualbuild.leftovers.reclaim does, but by name in the open directory: a link there is
    removed itself, never followed.
    """
    for entry in os.scandir(directory):
        pid = owner_pid(entry.name)
        if pid is None or pid == os.getpid() or not run.process_gone(pid):
            continue
        log.debug("removing %s/%s, left by dualbuild process %d, which is gone", shown, entry.name, pid)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, dir_fd=directory)
            else:
                os.unlink(entry.name, dir_fd=directory)
