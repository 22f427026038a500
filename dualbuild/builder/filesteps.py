"""File steps done directly on a mounted stage root: paths resolved as the container sees them.

Every path is resolved inside the root, with symlinks interpreted relative to it (as securejoin
does), so a link such as ``/etc -> /`` or ``../../..`` can never lead outside the stage's tree.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from pathlib import Path

from dualbuild.errors import BuildError
from dualbuild.layer import tree


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

    Raises:
        BuildError: the path does not exist.
    """
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
