"""The image tree: ONE sorted walk of a root filesystem into canonical entries.

Every emitter writes exactly these entries, in this order, so the Docker layer, the OCI layer
and the ACI rootfs hold the same files (../shared/DESIGN.md, "Rules the emitters share").
File contents are not read here: the emitters stream them while writing.

Paths are ``/``-separated, relative to the root, without a leading ``./``. They are ``str``
decoded from the on-disk bytes as UTF-8 with ``surrogateescape`` -- what ``os.fsdecode`` does
on a UTF-8 system, but fixed here so the locale cannot change an image -- and a name that is
not UTF-8 survives: :func:`encode_name` gives back the original bytes, and the tar writer
encodes with the same codec.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dualbuild.errors import BuildError

# Extended attributes carried into images. rkt applies only these two families (rkt
# pkg/tar/tar.go xattrPrefixWhitelist); security.selinux and friends belong to the host.
_XATTR_NAMES = ("security.capability",)
_XATTR_PREFIXES = ("user.",)
# listxattr fails with these on filesystems without xattr support (tmpfs without user_xattr).
_NO_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA})
# Symlinks are followed at most this often when resolving /etc/passwd inside the tree
# (the kernel's own limit, MAXSYMLINKS).
_MAX_SYMLINKS = 40
# /etc/passwd and /etc/group are small; refuse to read anything absurdly large.
_MAX_ID_FILE = 16 << 20


def decode_name(raw: bytes) -> str:
    """A file name or link target as str; bytes that are not UTF-8 become surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    """The original bytes of a name made by :func:`decode_name`."""
    return name.encode("utf-8", "surrogateescape")


class EntryType(enum.StrEnum):
    """Kinds of tree entries (sockets are never entries: they cannot be archived)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    # A layer's record that a path of the layers below is gone (``.wh.NAME``, or ``.wh..wh..opq``
    # for all of a directory's old content): an empty regular file in the tar, never on disk.
    WHITEOUT = "whiteout"


# Not frozen: a frozen dataclass pays object.__setattr__ per field, 2.8 µs of every entry's
# ~15 µs snapshot cost. Entries are never changed after the snapshot all the same.
@dataclass(slots=True, kw_only=True)
class Entry:
    """One path of the tree, with everything the archives record about it.

    Attributes:
        path: Relative path, ``/``-separated, decoded with :func:`decode_name`.
        type: What the entry is.
        mode: Permission bits including setuid, setgid and sticky (``st_mode & 0o7777``).
        uid: Numeric owner.
        gid: Numeric group.
        size: Content length for ``FILE``; 0 for every other type.
        mtime: Modification time in whole seconds, clamped to ``[0, source_date_epoch]``.
        link_target: A symlink's target, or for ``HARDLINK`` the path of the earlier entry
            (in walk order) that is the same inode.
        devmajor: Device major number (``CHAR``/``BLOCK``).
        devminor: Device minor number (``CHAR``/``BLOCK``).
        xattrs: ``security.capability`` and ``user.*`` attributes, sorted by name.
    """

    path: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime: int = 0
    link_target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()

    @property
    def path_bytes(self) -> bytes:
        """The path as the bytes it has on disk."""
        return encode_name(self.path)


class TreeContents(Protocol):
    """The bytes of a tree that is not a directory on disk."""

    def read(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` of the regular file at ``path`` (fewer at its end)."""

    def source_stat(self, path: str) -> tuple[int, int] | None:
        """The mtime and size of the regular file ``path`` leads to inside the tree, or None."""

    def file_bytes(self, path: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes of the regular file ``path`` leads to inside the tree, or None."""


@dataclass(frozen=True, kw_only=True)
class Tree:
    """A root filesystem directory as the canonical entries every format holds.

    Attributes:
        root: The directory that is walked; file contents are read from here when emitting.
        entries: Every entry, parents before children, siblings sorted by name bytes. From
            :func:`snapshot`, a tuple; from :func:`stream`, walked while it is read, once.
        source_date_epoch: The clamp applied to every mtime.
        warnings: What the walk left out and why (sockets, unknown file types); a streamed
            tree's fill in as its entries are read.
        contents: Where the files' bytes are read when they are not under ``root`` (a tree
            held in memory, dualbuild.layer.memtree); None: read from ``root``.
    """

    root: Path
    entries: Iterable[Entry]
    source_date_epoch: int
    warnings: Sequence[str] = ()
    contents: TreeContents | None = None

    def source_path(self, entry: Entry) -> bytes:
        """The absolute on-disk path of an entry, as bytes (safe for any name)."""
        return os.path.join(os.fsencode(self.root), entry.path_bytes)


def snapshot(root: Path, source_date_epoch: int) -> Tree:
    """Walk ``root`` once, without following symlinks, into a canonical sorted entry list.

    Args:
        root: The root filesystem directory.
        source_date_epoch: Every mtime later than this is clamped to it.

    Returns:
        The tree; sockets and unknown file types are skipped and named in ``warnings``.

    Raises:
        BuildError: ``root`` is not a directory, or the tree cannot be read.
    """
    _check_root(root, source_date_epoch)
    warnings: list[str] = []
    entries = tuple(_entries(root, source_date_epoch, warnings))
    return Tree(root=root, entries=entries, source_date_epoch=source_date_epoch, warnings=tuple(warnings))


def stream(root: Path, source_date_epoch: int) -> Tree:
    """The tree :func:`snapshot` gives, with its entries walked only as they are read.

    What a build exports: memory does not grow with the number of entries (the walk keeps
    one directory's listing per level, and the paths of files with several links), and the
    walk overlaps the writing instead of leaving a core idle before it. The entries can be
    read once; a second read raises, rather than silently giving an empty tree.

    Args:
        root: The root filesystem directory (for a build: the final stage, mounted).
        source_date_epoch: Every mtime later than this is clamped to it.

    Returns:
        The tree; ``warnings`` names what the walk skipped once the entries have been read.

    Raises:
        BuildError: ``root`` is not a directory. A tree that cannot be read raises
            BuildError while its entries are read.
    """
    _check_root(root, source_date_epoch)
    warnings: list[str] = []
    return Tree(
        root=root,
        entries=_OneWalk(root, source_date_epoch, warnings),
        source_date_epoch=source_date_epoch,
        warnings=warnings,
    )


class _OneWalk:
    """A streamed tree's entries: the walk starts when they are iterated, the first time only."""

    def __init__(self, root: Path, source_date_epoch: int, warnings: list[str]) -> None:
        self._root = root
        self._source_date_epoch = source_date_epoch
        self._warnings = warnings
        self._walked = False

    def __iter__(self) -> Iterator[Entry]:
        if self._walked:
            raise BuildError(f"the streamed tree of {self._root} was already read; its entries come once")
        self._walked = True
        return _entries(self._root, self._source_date_epoch, self._warnings)


def _check_root(root: Path, source_date_epoch: int) -> None:
    if source_date_epoch < 0:
        raise BuildError(f"source_date_epoch must not be negative, got {source_date_epoch}")
    if not root.is_dir():
        raise BuildError(f"cannot snapshot {root}: not a directory")


def _entries(root: Path, source_date_epoch: int, warnings: list[str]) -> Iterator[Entry]:
    """Every entry of the tree in order; what is skipped is added to ``warnings``."""
    # (st_dev, st_ino) of regular files with more than one link → the first path seen.
    inodes: dict[tuple[int, int], str] = {}
    root_slash = os.path.join(os.fsencode(root), b"")
    try:
        for rel, st, xattrs in _walk(root_slash):
            entry = make_entry(root_slash, rel, st, xattrs, source_date_epoch, inodes, warnings)
            if entry is not None:
                yield entry
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename else str(root)
        raise BuildError(f"cannot read the image tree at {where}: {exc.strerror or exc}") from exc


_Child = tuple[bytes, os.stat_result, tuple[tuple[str, bytes], ...]]


def _walk(root_slash: bytes) -> Iterator[_Child]:
    """Yield ``(relative path, lstat, xattrs)`` depth-first: a directory, then its whole subtree.

    Siblings are sorted by name bytes, so the order does not depend on readdir order, the
    locale or the filesystem. An explicit stack keeps deep trees off the recursion limit.
    ``root_slash`` ends with a slash; paths are joined by concatenation (os.path.join costs
    more than the lstat on a 100k-file tree).
    """
    stack: list[tuple[bytes, Iterator[_Child]]] = [(b"", _children(root_slash))]
    while stack:
        prefix, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        name, st, xattrs = item
        rel = prefix + name
        yield rel, st, xattrs
        if stat.S_ISDIR(st.st_mode):
            stack.append((rel + b"/", _children(root_slash + rel + b"/")))


def _children(directory_slash: bytes) -> Iterator[_Child]:
    """A directory's entries, sorted, with their lstat and carried xattrs.

    One kind of system call at a time for the whole directory (lstat, then listxattr): 4% less
    time than both per entry on files100k (measured). Linux allows neither user.* nor
    security.capability on symlinks: they are not asked.
    """
    with os.scandir(directory_slash) as it:
        found = [(entry.name, entry.stat(follow_symlinks=False)) for entry in it]
    found.sort(key=lambda item: item[0])
    return iter(
        [
            (name, st, () if stat.S_ISLNK(st.st_mode) else carried_xattrs(directory_slash + name))
            for name, st in found
        ]
    )


def make_entry(
    root_slash: bytes,
    rel: bytes,
    st: os.stat_result,
    xattrs: tuple[tuple[str, bytes], ...],
    source_date_epoch: int,
    inodes: dict[tuple[int, int], str],
    warnings: list[str],
) -> Entry | None:
    """The entry of one walked path (``rel`` under ``root_slash``); None for what is skipped.

    ``inodes`` maps the files with several links seen so far to their first path: a later
    path of one becomes a hard link to it. What is skipped is added to ``warnings``.
    """
    path = rel.decode("utf-8", "surrogateescape")  # decode_name, inlined: this runs per entry
    full = root_slash + rel
    fmt = stat.S_IFMT(st.st_mode)
    size, link_target, devmajor, devminor = 0, "", 0, 0
    if fmt == stat.S_IFREG:
        kind = EntryType.FILE
        size = st.st_size
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = inodes.setdefault(key, path)
            if first != path:
                # The inode's content and xattrs travel with the first entry; extracting a
                # hardlink re-uses them.
                kind, size, link_target = EntryType.HARDLINK, 0, first
    elif fmt == stat.S_IFDIR:
        kind = EntryType.DIR
    elif fmt == stat.S_IFLNK:
        kind, link_target = EntryType.SYMLINK, decode_name(os.readlink(full))
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        kind = EntryType.CHAR if fmt == stat.S_IFCHR else EntryType.BLOCK
        devmajor, devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif fmt == stat.S_IFIFO:
        kind = EntryType.FIFO
    elif fmt == stat.S_IFSOCK:
        warnings.append(f"skipped socket /{path}: sockets cannot be stored in an image")
        return None
    else:
        warnings.append(f"skipped /{path}: unsupported file type {oct(fmt)}")
        return None
    if kind is EntryType.HARDLINK:
        # A hardlink's xattrs are its inode's, written with the first entry.
        xattrs = ()
    return Entry(
        path=path,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        mtime=min(max(int(st.st_mtime), 0), source_date_epoch),
        link_target=link_target,
        devmajor=devmajor,
        devminor=devminor,
        xattrs=xattrs,
    )


def carried_xattrs(full: bytes) -> tuple[tuple[str, bytes], ...]:
    """The carried xattrs of a path, never following a symlink and never opening the file."""
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR_ERRNOS:
            return ()
        raise
    found: list[tuple[str, bytes]] = []
    for name in sorted(names):
        if name not in _XATTR_NAMES and not name.startswith(_XATTR_PREFIXES):
            continue
        try:
            found.append((name, os.getxattr(full, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno not in _NO_XATTR_ERRNOS:
                raise
    return tuple(found)


# --- users and groups ---------------------------------------------------------------------


def resolve_ids(tree: Tree, user: str | None, group: str | None) -> tuple[int, int]:
    """Resolve an app's user and group to numeric ids through the tree's own /etc files.

    The ACI needs numbers (appc.md §2.4): names are looked up in the image's /etc/passwd and
    /etc/group, never the host's. Rules, matching what Docker does at run time:

    * no user: ``0:0``;
    * a numeric user or group is used as is;
    * a user without a group gets the user's primary group from /etc/passwd, or 0 when a
      numeric user has no passwd entry (Docker runs ``--user 1000`` as gid 0 then).

    Args:
        tree: The image tree.
        user: A user name or numeric uid, or None.
        group: A group name or numeric gid, or None.

    Returns:
        ``(uid, gid)``.

    Raises:
        BuildError: A name is not in the tree's /etc/passwd or /etc/group.
    """
    uid, primary_gid = 0, 0
    if user:
        if user.isdigit():
            uid = int(user)
            by_uid = [fields for fields in _id_file(tree, "etc/passwd") if fields[2] == user]
            primary_gid = int(by_uid[0][3]) if by_uid and by_uid[0][3].isdigit() else 0
        else:
            found = _lookup(tree, "etc/passwd", user, "user")
            uid = int(found[2])
            primary_gid = int(found[3]) if found[3].isdigit() else 0
    if not group:
        return uid, primary_gid
    if group.isdigit():
        return uid, int(group)
    return uid, int(_lookup(tree, "etc/group", group, "group")[2])


def _lookup(tree: Tree, rel: str, name: str, what: str) -> list[str]:
    for fields in _id_file(tree, rel):
        if fields[0] == name and fields[2].isdigit():
            return fields
    raise BuildError(
        f"app {what} {name!r} is not in the image's /{rel}",
        hint=f"add the {what} to /{rel} in a build step, or give a numeric id",
    )


def _id_file(tree: Tree, rel: str) -> list[list[str]]:
    """The records of /etc/passwd or /etc/group in the tree, first match first (like getpwnam)."""
    if tree.contents is not None:
        data = tree.contents.file_bytes(rel, _MAX_ID_FILE)
        return id_records(data.decode("utf-8", "surrogateescape")) if data is not None else []
    try:
        path = resolve_in_root(os.fsencode(tree.root), rel.encode())
    except BuildError:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return []
        text = file.read(_MAX_ID_FILE).decode("utf-8", "surrogateescape")
    return id_records(text)


def id_records(text: str) -> list[list[str]]:
    """The records of an /etc/passwd or /etc/group text, first match first, each 4 fields or more."""
    records = []
    for line in text.splitlines():
        # Skip comments and NIS compat lines (+name / -name), as glibc's files backend does.
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) >= 3:
            records.append(fields + [""] * (4 - len(fields)))
    return records


def resolve_in_root(root: bytes, path: bytes, *, follow_last: bool = True) -> bytes:
    """The host path of ``path`` inside ``root``, as if ``root`` were ``/``; never outside it.

    Symlinks are interpreted relative to ``root`` (as securejoin does), so a link such as
    ``/etc -> /`` or ``../../..`` cannot lead out. Components that do not exist are kept as
    they are written; with ``follow_last`` false a final symlink is not followed.

    Raises:
        BuildError: too many levels of symbolic links.
    """
    parts = [part for part in path.split(b"/") if part and part != b"."]
    resolved: list[bytes] = []
    followed = 0
    while parts:
        part = parts.pop(0)
        if part == b"..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except OSError:
            is_link = False
        if is_link and (follow_last or parts):
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise BuildError(f"{os.fsdecode(path)}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith(b"/"):
                resolved = []
            parts = [p for p in target.split(b"/") if p and p != b"."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved) if resolved else root
