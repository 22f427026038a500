"""Tarballs from outside (rootfs, ACI): read as streams, checked entry by entry, extracted safely.

A rootfs tarball is extracted by GNU tar straight into the container's mounted root, on the
host: much faster than ``buildah add``, which extracts in a chroot. The archive is read once,
here, and tar is fed only the bytes of entries already checked (no absolute name, no ``..``, no
hardlink leaving the tree, nothing under a symlink the archive made that could point outside),
so tar never sees a refused entry. GNU tar guards on its own as well: it strips a leading ``/``,
skips ``..`` members and makes symlinks that could leave the tree only after every other entry.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import IO

from dualbuild import run
from dualbuild.archive import decompressed
from dualbuild.errors import BuildError, CommandError

_CHUNK = 1 << 16
# What the emitters carry (and all that `buildah add` restored); GNU tar restores user.* alone
# unless told.
_XATTRS = ("security.capability", "user.*")


def unsafe_member_reason(name: str, member: tarfile.TarInfo) -> str | None:
    """Why an entry could write outside the tree it is extracted into, or None if it cannot."""
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' component"
    if member.islnk():
        link = member.linkname
        if link.startswith("/") or ".." in posixpath.normpath(link).split("/"):
            return f"a hardlink to {link!r} outside the tree"
    return None


def check_member(member: tarfile.TarInfo, planted: PlantedSymlinks, where: str) -> None:
    """Refuse an entry that could write outside the tree (then remember the symlinks it plants).

    Raises:
        BuildError: the entry is unsafe, naming it.
    """
    hint = "rebuild the tarball with relative paths (tar -C ROOT -cf OUT.tar .)"
    reason = unsafe_member_reason(member.name, member)
    if reason is None:
        hint = "a tarball of a real tree has no entries below a symlink; rebuild it from one"
        reason = planted.reason(member)
    if reason is not None:
        raise BuildError(f"{where}: entry {member.name!r} has {reason}; refusing to extract", hint=hint)


class PlantedSymlinks:
    """Symlinks the archive makes whose target may lie outside the tree (absolute, or with '..').

    An entry below one would be written wherever the symlink points, so it is refused; a
    tarball of a real tree never has one (GNU tar would fail on it too).
    """

    def __init__(self) -> None:
        self.names: set[str] = set()
        # Directories known to lie below none of them: entries come directory by directory,
        # so most checks stop here (Debian trees hold hundreds of absolute symlinks).
        self.clear_directories: set[str] = set()

    def reason(self, member: tarfile.TarInfo) -> str | None:
        """Why this entry is refused (a path through such a symlink), or None; then remember it."""
        for path in [member.name, member.linkname] if member.islnk() else [member.name]:
            symlink = self._planted_ancestor(posixpath.dirname(posixpath.normpath(path)))
            if symlink is not None:
                return f"a path through the symlink {symlink!r}, which may point outside the tree"
        target = member.linkname
        if member.issym() and (target.startswith("/") or ".." in target.split("/")):
            self.names.add(posixpath.normpath(member.name))
            self.clear_directories.clear()
        return None

    def _planted_ancestor(self, directory: str) -> str | None:
        if not self.names or directory in self.clear_directories:
            return None
        ancestor = directory
        while ancestor not in ("", "/", "."):
            if ancestor in self.names:
                return ancestor
            ancestor = posixpath.dirname(ancestor)
        self.clear_directories.add(directory)
        return None


class _CheckedPassage:
    """The archive read for tarfile, passed on to ``sink`` only up to the end of checked entries.

    tarfile reads ahead: the bytes it has read may already hold the next entry's header, so
    everything past ``cleared`` waits until that entry is checked too.
    """

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        self.source = source
        self.sink = sink
        self.waiting = bytearray()
        self.waiting_at = 0  # archive offset of waiting[0]
        self.cleared = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if not self.waiting and self.waiting_at + len(data) <= self.cleared:
            self.sink.write(data)
            self.waiting_at += len(data)
        else:
            self.waiting += data
            self._pass_on()
        return data

    def clear(self, offset: int) -> None:
        """Every byte before ``offset`` belongs to checked entries: pass it on."""
        self.cleared = offset
        self._pass_on()

    def _pass_on(self) -> None:
        count = min(self.cleared - self.waiting_at, len(self.waiting))
        if count > 0:
            self.sink.write(self.waiting[:count])
            del self.waiting[:count]
            self.waiting_at += count

    def finish(self) -> bool:
        """Pass on the end-of-archive zeros after the last entry, and nothing after them.

        Returns False if the last entry is followed by neither a zero block nor the end of the
        data, but by a damaged header: tarfile stops there without a word.
        """
        rest = bytes(self.waiting)
        while len(rest) < tarfile.BLOCKSIZE and (more := self.source.read(_CHUNK)):
            rest += more
        if rest[: tarfile.BLOCKSIZE].strip(b"\0"):
            return False
        # Like tarfile (and buildah add before), ignore what follows the first zero block;
        # tar must not be given those unchecked bytes either.
        while rest:
            zeros = len(rest) - len(rest.lstrip(b"\0"))
            self.sink.write(rest[:zeros])
            if zeros < len(rest):
                break
            rest = self.source.read(_CHUNK)
        return True


def extract_checked(tarball: Path, root: Path, what: str) -> None:
    """Extract a tarball into ``root`` with GNU tar, checking every entry before tar gets it.

    Owners (numeric), modes, device nodes, hardlinks and the xattrs the emitters carry are kept.

    Raises:
        BuildError: an entry is unsafe (naming it; nothing of it reached tar), the tarball is
            unreadable, or tar failed (with its output).
        ToolNotFoundError: tar (or zstd for a .zst tarball) is missing.
    """
    tar = run.find_tool("tar", f"extract the {what}")
    argv: list[str | os.PathLike[str]] = [
        tar, "--extract", "--file=-", "--read-full-records", f"--directory={os.fspath(root)}",
        "--preserve-permissions", "--same-owner", "--numeric-owner", "--warning=no-timestamp",
        "--xattrs", *(f"--xattrs-include={pattern}" for pattern in _XATTRS),
    ]  # fmt: skip
    try:
        with run.stream_stdin(argv) as sink:
            _feed_checked(tarball, sink, what)
    except CommandError as error:
        raise BuildError(f"{what} {tarball.name}: extracting it failed\n{error.output_tail}") from None


def _feed_checked(tarball: Path, sink: IO[bytes], what: str) -> None:
    links = PlantedSymlinks()
    try:
        with decompressed(tarball) as source:
            passage = _CheckedPassage(source, sink)
            # Stream mode only reads, so the passage has no seek, tell or write for typeshed.
            with tarfile.open(fileobj=passage, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    check_member(member, links, f"{what} {tarball.name}")
                    passage.clear(archive.offset)
            if not passage.finish():
                raise BuildError(
                    f"{what} {tarball.name} cannot be read: a damaged entry header at byte {passage.cleared}"
                )
    except BrokenPipeError:
        raise  # tar stopped reading: its own error says why
    except (tarfile.TarError, EOFError, OSError, CommandError) as error:
        raise BuildError(f"{what} {tarball.name} cannot be read: {error}") from None
