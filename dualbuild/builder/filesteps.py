"""File steps done directly on a mounted stage root: paths resolved as the container sees them.

Every path is resolved inside the root, with symlinks interpreted relative to it (as securejoin
does), so a link such as ``/etc -> /`` or ``../../..`` can never lead outside the stage's tree.
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

from dualbuild.errors import BuildError
from dualbuild.layer import tree
from dualbuild.log import log


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


def make_directory(root: Path, path: str, *, parents: bool, mode: int, owner: str | None) -> None:
    """``mkdir``: create a directory (and, with parents, its missing parents as root 0755).

    Raises:
        BuildError: the path exists and is not a directory, or a parent is missing.
    """
    target = resolve_in_root(root, path)
    uid, gid = _owner(owner)
    if target.is_dir():
        os.chmod(target, mode)
        os.chown(target, uid, gid)
        return
    if target.exists() or target.is_symlink():
        raise BuildError(f"mkdir {path}: the path exists and is not a directory")
    parent = target.parent
    if not parent.is_dir():
        if not parents:
            raise BuildError(f"mkdir {path}: the parent directory does not exist", hint="set parents = true")
        make_directory(root, posixpath.dirname(path.rstrip("/")) or "/", parents=True, mode=0o755, owner=None)
        target = resolve_in_root(root, path)
    target.mkdir()
    # mkdir(2) applies the umask; the recipe's mode is meant literally.
    os.chmod(target, mode)
    os.chown(target, uid, gid)


def make_symlink(root: Path, path: str, target: str) -> None:
    """``symlink``: create a link; its parent directories are created as root 0755.

    Raises:
        BuildError: something already exists at the path.
    """
    parent = posixpath.dirname(path.rstrip("/")) or "/"
    if not resolve_in_root(root, parent).is_dir():
        make_directory(root, parent, parents=True, mode=0o755, owner=None)
    link = resolve_in_root(root, path, follow_last=False)
    if link.exists() or link.is_symlink():
        raise BuildError(f"symlink {path}: the path already exists", hint="remove it in an earlier step")
    os.symlink(target, link)
    os.lchown(link, 0, 0)


def remove_path(root: Path, path: str) -> None:
    """``remove``: delete a path recursively (a symlink itself, not what it points to).

    A path with ``*``, ``?`` or ``[...]`` is a pattern, expanded as the shell expands it (see
    :func:`expand_pattern`); a pattern that matches nothing removes nothing, as ``rm -rf`` with
    a glob that matched nothing does, unless a file has the pattern's very name.

    Raises:
        BuildError: a plain path does not exist.
    """
    if not _has_magic(path):
        _remove_one(root, path)
        return
    matches = expand_pattern(root, path)
    if not matches and os.path.lexists(resolve_in_root(root, path, follow_last=False)):
        matches = [path]  # the shell's way too: an unmatched word stays as it was written
    if not matches:
        log.info("remove %s: nothing matches the pattern, nothing removed", path)
    for match in matches:
        if os.path.lexists(resolve_in_root(root, match, follow_last=False)):
            _remove_one(root, match)


def _remove_one(root: Path, path: str) -> None:
    target = resolve_in_root(root, path, follow_last=False)
    if target == root:
        raise BuildError(f"remove {path}: refusing to remove the root directory")
    try:
        info = target.lstat()
    except FileNotFoundError:
        raise BuildError(f"remove {path}: no such file or directory in the image") from None
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(target)
    else:
        target.unlink()


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def expand_pattern(root: Path, pattern: str) -> list[str]:
    """The image paths an absolute shell pattern matches, sorted; never a path outside ``root``.

    Each part of the path is matched against one directory's names (``fnmatch``: ``*``, ``?``,
    ``[...]``, ``[!...]``); as in the shell, a name starting with ``.`` is matched only by a part
    starting with ``.``. ``**`` as a whole part matches any number of directories, none included
    (bash's globstar, never following a symlink); as the last part it matches everything inside
    the directory, but not the directory itself. Directories are read where the image's own
    symlinks lead, resolved inside the root as every file step resolves them.
    """
    found = ["/"]
    parts = [part for part in pattern.split("/") if part]
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        matched: list[str] = []
        for base in found:
            if part == "**" and last:
                matched.extend(_below(root, base, directories=False))
            elif part == "**":
                matched.extend([base, *_below(root, base, directories=True)])
            elif not _has_magic(part):
                candidate = posixpath.join(base, part)
                if os.path.lexists(resolve_in_root(root, candidate, follow_last=False)):
                    matched.append(candidate)
            else:
                names = _names(root, base)
                matched.extend(posixpath.join(base, name) for name in names if _part_matches(part, name))
        # "a/**/b" reaches a/x/b along a/** and a/x/**: each path once.
        found = list(dict.fromkeys(matched))
    return _outermost(sorted(found))


def _names(root: Path, directory: str) -> list[str]:
    host = resolve_in_root(root, directory)
    if not host.is_dir():
        return []
    return sorted(os.listdir(host))


def _part_matches(part: str, name: str) -> bool:
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)


def _below(root: Path, directory: str, *, directories: bool) -> list[str]:
    """What lies inside ``directory`` (only directories, if asked), not following symlinks.

    As bash's globstar does, names starting with ``.`` are skipped.
    """
    found = []
    host = resolve_in_root(root, directory)
    for name in sorted(os.listdir(host)) if host.is_dir() else []:
        if name.startswith("."):
            continue
        path, child = posixpath.join(directory, name), host / name
        inside = child.is_dir() and not child.is_symlink()
        if inside or not directories:
            found.append(path)
        if inside:
            found.extend(_below(root, path, directories=directories))
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


def write_file(root: Path, path: str, content: bytes, *, mode: int, owner: str | None) -> None:
    """``write``: create or replace a regular file; parents are created as root 0755.

    Raises:
        BuildError: the path is a directory.
    """
    parent = posixpath.dirname(path.rstrip("/")) or "/"
    if not resolve_in_root(root, parent).is_dir():
        make_directory(root, parent, parents=True, mode=0o755, owner=None)
    target = resolve_in_root(root, path)
    if target.is_dir():
        raise BuildError(f"write {path}: the path is a directory")
    uid, gid = _owner(owner)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        descriptor = os.open(target, flags, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BuildError(f"write {path}: the path is a dangling symbolic link") from None
        raise
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        os.fchown(handle.fileno(), uid, gid)
        os.fchmod(handle.fileno(), mode)
