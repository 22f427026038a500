"""File steps done directly on a stage's root: paths resolved as the container sees them.

Every path is resolved inside the root, with symlinks interpreted relative to it (as securejoin
does), so a link such as ``/etc -> /`` or ``../../..`` can never lead outside the stage's tree.
The steps are written once, against :class:`StepRoot`: a mounted root (:class:`DiskRoot`) or a
tree held in memory (dualbuild.builder.heldroot), so both give the same tree.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from dualbuild.errors import BuildError
from dualbuild.layer import tree
from dualbuild.log import log


class StepRoot(Protocol):
    """Where file steps are done. Places are paths in the tree, ``/``-separated, ``""`` the root."""

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """``path`` with the tree's symlinks followed inside it (see layer.tree.resolve_in_root)."""

    def is_dir(self, place: str) -> bool:
        """Whether a directory is there (a symlink followed)."""

    def exists(self, place: str) -> bool:
        """Whether anything is there (a symlink followed)."""

    def lexists(self, place: str) -> bool:
        """Whether anything is there (a symlink not followed)."""

    def is_symlink(self, place: str) -> bool:
        """Whether a symlink is there."""

    def is_real_dir(self, place: str) -> bool:
        """Whether a directory, not a symlink to one, is there; FileNotFoundError: nothing is."""

    def listdir(self, place: str) -> list[str]:
        """The names in the directory there."""

    def mkdir(self, place: str, mode: int, uid: int, gid: int) -> None:
        """Make a directory with exactly this mode and owner; its parent must be one."""

    def set_mode_owner(self, place: str, mode: int, uid: int, gid: int) -> None:
        """chmod, then chown, what is there."""

    def symlink(self, place: str, target: str) -> None:
        """Make a symlink owned by root."""

    def remove(self, place: str) -> None:
        """Remove what is there, a directory with everything in it."""

    def write(self, place: str, content: bytes, mode: int, uid: int, gid: int) -> None:
        """Create or truncate a regular file, never through a final symlink (OSError ELOOP)."""


class DiskRoot:
    """A mounted root on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fsencode(root)

    def host(self, place: str) -> Path:
        """The host path of a place in the tree."""
        return self.root / place if place else self.root

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """``path`` with the tree's symlinks followed inside it (see layer.tree.resolve_in_root)."""
        resolved = tree.resolve_in_root(self._root, os.fsencode(path), follow_last=follow_last)
        return os.fsdecode(resolved[len(self._root) :].strip(b"/"))

    def is_dir(self, place: str) -> bool:
        """Whether a directory is there (a symlink followed)."""
        return self.host(place).is_dir()

    def exists(self, place: str) -> bool:
        """Whether anything is there (a symlink followed)."""
        return self.host(place).exists()

    def lexists(self, place: str) -> bool:
        """Whether anything is there (a symlink not followed)."""
        return os.path.lexists(self.host(place))

    def is_symlink(self, place: str) -> bool:
        """Whether a symlink is there."""
        return self.host(place).is_symlink()

    def is_real_dir(self, place: str) -> bool:
        """Whether a directory, not a symlink to one, is there; FileNotFoundError: nothing is."""
        return stat.S_ISDIR(self.host(place).lstat().st_mode)

    def listdir(self, place: str) -> list[str]:
        """The names in the directory there."""
        return os.listdir(self.host(place))

    def mkdir(self, place: str, mode: int, uid: int, gid: int) -> None:
        """Make a directory with exactly this mode and owner; its parent must be one."""
        target = self.host(place)
        target.mkdir()
        # mkdir(2) applies the umask; the recipe's mode is meant literally.
        self.set_mode_owner(place, mode, uid, gid)

    def set_mode_owner(self, place: str, mode: int, uid: int, gid: int) -> None:
        """chmod, then chown, what is there."""
        target = self.host(place)
        os.chmod(target, mode)
        os.chown(target, uid, gid)

    def symlink(self, place: str, target: str) -> None:
        """Make a symlink owned by root."""
        link = self.host(place)
        os.symlink(target, link)
        os.lchown(link, 0, 0)

    def remove(self, place: str) -> None:
        """Remove what is there, a directory with everything in it."""
        target = self.host(place)
        if self.is_real_dir(place):
            shutil.rmtree(target)
        else:
            target.unlink()

    def write(self, place: str, content: bytes, mode: int, uid: int, gid: int) -> None:
        """Create or truncate a regular file, never through a final symlink (OSError ELOOP)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        descriptor = os.open(self.host(place), flags, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            os.fchown(handle.fileno(), uid, gid)
            os.fchmod(handle.fileno(), mode)


def _on(root: Path | StepRoot) -> StepRoot:
    return DiskRoot(root) if isinstance(root, Path) else root


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of ``path`` inside ``root``; never outside it (see layer.tree.resolve_in_root).

    Raises:
        BuildError: too many levels of symbolic links.
    """
    resolved = tree.resolve_in_root(os.fsencode(root), os.fsencode(path), follow_last=follow_last)
    return Path(os.fsdecode(resolved))


def container_path(path: str, workdir: str | None) -> str:
    """An absolute path in the image: relative paths are taken from the workdir (or /)."""
    if path.startswith("/"):
        return posixpath.normpath(path)
    return posixpath.normpath(posixpath.join(workdir or "/", path))


def _owner(owner: str | None) -> tuple[int, int]:
    if owner is None:
        return 0, 0
    uid, _, gid = owner.partition(":")
    return int(uid), int(gid)


def make_directory(root: Path | StepRoot, path: str, *, parents: bool, mode: int, owner: str | None) -> None:
    """``mkdir``: create a directory (and, with parents, its missing parents as root 0755).

    Raises:
        BuildError: the path exists and is not a directory, or a parent is missing.
    """
    on = _on(root)
    target = on.resolve(path)
    uid, gid = _owner(owner)
    if on.is_dir(target):
        on.set_mode_owner(target, mode, uid, gid)
        return
    if on.exists(target) or on.is_symlink(target):
        raise BuildError(f"mkdir {path}: the path exists and is not a directory")
    if not on.is_dir(posixpath.dirname(target)):
        if not parents:
            raise BuildError(f"mkdir {path}: the parent directory does not exist", hint="set parents = true")
        make_directory(on, posixpath.dirname(path.rstrip("/")) or "/", parents=True, mode=0o755, owner=None)
        target = on.resolve(path)
    on.mkdir(target, mode, uid, gid)


def make_symlink(root: Path | StepRoot, path: str, target: str) -> None:
    """``symlink``: create a link; its parent directories are created as root 0755.

    Raises:
        BuildError: something already exists at the path.
    """
    on = _on(root)
    parent = posixpath.dirname(path.rstrip("/")) or "/"
    if not on.is_dir(on.resolve(parent)):
        make_directory(on, parent, parents=True, mode=0o755, owner=None)
    link = on.resolve(path, follow_last=False)
    if on.lexists(link):
        raise BuildError(f"symlink {path}: the path already exists", hint="remove it in an earlier step")
    on.symlink(link, target)


def remove_path(root: Path | StepRoot, path: str) -> None:
    """``remove``: delete a path recursively (a symlink itself, not what it points to).

    A path with ``*``, ``?`` or ``[...]`` is a pattern, expanded as the shell expands it (see
    :func:`expand_pattern`); a pattern that matches nothing removes nothing, as ``rm -rf`` with
    a glob that matched nothing does, unless a file has the pattern's very name.

    Raises:
        BuildError: a plain path does not exist.
    """
    on = _on(root)
    if not _has_magic(path):
        _remove_one(on, path)
        return
    matches = expand_pattern(on, path)
    if not matches and on.lexists(on.resolve(path, follow_last=False)):
        matches = [path]  # the shell's way too: an unmatched word stays as it was written
    if not matches:
        log.info("remove %s: nothing matches the pattern, nothing removed", path)
    for match in matches:
        if on.lexists(on.resolve(match, follow_last=False)):
            _remove_one(on, match)


def _remove_one(on: StepRoot, path: str) -> None:
    target = on.resolve(path, follow_last=False)
    if target == "":
        raise BuildError(f"remove {path}: refusing to remove the root directory")
    try:
        on.is_real_dir(target)
    except FileNotFoundError:
        raise BuildError(f"remove {path}: no such file or directory in the image") from None
    on.remove(target)


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def expand_pattern(root: Path | StepRoot, pattern: str) -> list[str]:
    """The image paths an absolute shell pattern matches, sorted; never a path outside ``root``.

    Each part of the path is matched against one directory's names (``fnmatch``: ``*``, ``?``,
    ``[...]``, ``[!...]``); as in the shell, a name starting with ``.`` is matched only by a part
    starting with ``.``. ``**`` as a whole part matches any number of directories, none included
    (bash's globstar, never following a symlink); as the last part it matches everything inside
    the directory, but not the directory itself. Directories are read where the image's own
    symlinks lead, resolved inside the root as every file step resolves them.
    """
    on = _on(root)
    found = ["/"]
    parts = [part for part in pattern.split("/") if part]
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        matched: list[str] = []
        for base in found:
            if part == "**" and last:
                matched.extend(_below(on, base, directories=False))
            elif part == "**":
                matched.extend([base, *_below(on, base, directories=True)])
            elif not _has_magic(part):
                candidate = posixpath.join(base, part)
                if on.lexists(on.resolve(candidate, follow_last=False)):
                    matched.append(candidate)
            else:
                names = _names(on, base)
                matched.extend(posixpath.join(base, name) for name in names if _part_matches(part, name))
        # "a/**/b" reaches a/x/b along a/** and a/x/**: each path once.
        found = list(dict.fromkeys(matched))
    return _outermost(sorted(found))


def _names(on: StepRoot, directory: str) -> list[str]:
    place = on.resolve(directory)
    if not on.is_dir(place):
        return []
    return sorted(on.listdir(place))


def _part_matches(part: str, name: str) -> bool:
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)


def _below(on: StepRoot, directory: str, *, directories: bool) -> list[str]:
    """What lies inside ``directory`` (only directories, if asked), not following symlinks.

    As bash's globstar does, names starting with ``.`` are skipped.
    """
    found = []
    place = on.resolve(directory)
    for name in sorted(on.listdir(place)) if on.is_dir(place) else []:
        if name.startswith("."):
            continue
        path, child = posixpath.join(directory, name), posixpath.join(place, name)
        inside = on.is_dir(child) and not on.is_symlink(child)
        if inside or not directories:
            found.append(path)
        if inside:
            found.extend(_below(on, path, directories=directories))
    return found


def _outermost(paths: list[str]) -> list[str]:
    """The paths without those inside another of them (removed with it)."""
    chosen = set(paths)
    return [path for path in paths if not any(parent in chosen for parent in _parents(path))]


def _parents(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent not in ("/", ""):
        yield parent
        parent = posixpath.dirname(parent)


def write_file(root: Path | StepRoot, path: str, content: bytes, *, mode: int, owner: str | None) -> None:
    """``write``: create or replace a regular file; parents are created as root 0755.

    Raises:
        BuildError: the path is a directory.
    """
    on = _on(root)
    parent = posixpath.dirname(path.rstrip("/")) or "/"
    if not on.is_dir(on.resolve(parent)):
        make_directory(on, parent, parents=True, mode=0o755, owner=None)
    target = on.resolve(path)
    if on.is_dir(target):
        raise BuildError(f"write {path}: the path is a directory")
    uid, gid = _owner(owner)
    try:
        on.write(target, content, mode, uid, gid)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BuildError(f"write {path}: the path is a dangling symbolic link") from None
        raise
