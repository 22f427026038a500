"""A layer as the difference of two trees: what turns ``lower`` into ``upper``.

A layered image's own layers are made here: the changed and new entries of ``upper`` (parents
before children, siblings sorted by name bytes, as the whole-tree walk orders them) and a
whiteout for every path ``upper`` no longer has (image-formats.md §4.1): ``.wh.NAME`` beside
it, or ``.wh..wh..opq`` in a directory none of whose old entries is left. Entries carry what
the whole-tree walk gives them (dualbuild.layer.tree), so a file in a layer has the bytes it
has in the squashed tree.

Both trees are usually mounts of one buildah store: a file neither side touched is then the
same inode of a lower layer, with the same ``st_ctime``, which no step can set back. So an
entry whose stat is the same including ctime is unchanged without being read; one whose
ctime differs but nothing else (rewritten with the same size and mtime, chmod'ed and back) has
its xattrs, link target or content compared. Trees of different stores are compared right,
only slower.

The parent directories of every changed entry are in the layer too, as containerd's differ
writes them: an applier then never makes a parent up.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from dualbuild.errors import BuildError
from dualbuild.layer.layers import ImageLayers, MadeLayer
from dualbuild.layer.tree import Entry, EntryType, Tree, carried_xattrs, make_entry

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# What a directory listing gives: name, and its lstat.
_Listing = list[tuple[bytes, os.stat_result]]


def changes(lower: Path | None, upper: Path, source_date_epoch: int) -> Tree:
    """The layer that turns the tree ``lower`` (None: an empty one) into ``upper``.

    The entries are walked as they are read, once (like :func:`dualbuild.layer.tree.stream`);
    :meth:`Changes.empty` tells, before the layer is written, whether there are any.

    Raises:
        BuildError: a root is not a directory; a tree cannot be read (while the entries are read).
    """
    if source_date_epoch < 0:
        raise BuildError(f"source_date_epoch must not be negative, got {source_date_epoch}")
    for root in (upper, lower):
        if root is not None and not root.is_dir():
            raise BuildError(f"cannot compare {root}: not a directory")
    return Tree(
        root=upper, entries=Changes(lower, upper, source_date_epoch), source_date_epoch=source_date_epoch
    )


def layer_tree(layer: MadeLayer, source_date_epoch: int) -> Tree:
    """A made layer's entries: those given, or the difference of its two mounted trees."""
    if layer.entries is not None:
        return layer.entries
    assert layer.upper is not None
    return changes(layer.lower, layer.upper, source_date_epoch)


def non_empty(layers: ImageLayers, source_date_epoch: int) -> ImageLayers:
    """The layers without the made ones that change nothing (a step that left the tree as it was).

    The emitters take the layers as they are: the image's layers and its ACI chain are then the
    same list, each layer looked at once for this.
    """
    made = tuple(layer for layer in layers.made if not _empty(layer, source_date_epoch))
    return dataclasses.replace(layers, made=made)


def _empty(layer: MadeLayer, source_date_epoch: int) -> bool:
    if layer.entries is not None:
        return not any(True for _ in layer.entries.entries)
    assert layer.upper is not None
    return Changes(layer.lower, layer.upper, source_date_epoch).empty()


class Changes:
    """A layer's entries, walked as they are read; the first one found ahead by :meth:`empty`."""

    def __init__(self, lower: Path | None, upper: Path, source_date_epoch: int) -> None:
        self._walk = _diff(
            os.path.join(os.fsencode(lower), b"") if lower is not None else None,
            os.path.join(os.fsencode(upper), b""),
            source_date_epoch,
        )
        self._ahead: list[Entry] = []
        self._started = False

    def empty(self) -> bool:
        """Whether the two trees are the same (walks until the first difference)."""
        if not self._ahead and not self._started:
            self._ahead = _first(self._walk)
            self._started = True
        return not self._ahead

    def __iter__(self) -> Iterator[Entry]:
        self.empty()
        ahead, self._ahead = self._ahead, []
        yield from ahead
        yield from self._walk


def _first(walk: Iterator[Entry]) -> list[Entry]:
    entry = next(walk, None)
    return [] if entry is None else [entry]


class _Directory:
    """A directory being walked: its place, its stat, and whether its entry is in the layer yet."""

    def __init__(self, rel: bytes, st: os.stat_result | None, items: Iterator[tuple[bytes, bool]]) -> None:
        self.rel = rel
        self.st = st
        self.items = items
        # The root has no entry of its own.
        self.written = st is None


def _diff(lower_slash: bytes | None, upper_slash: bytes, source_date_epoch: int) -> Iterator[Entry]:
    """Every entry of the layer in order; parents come just before their first changed child."""
    inodes: dict[tuple[int, int], str] = {}
    # What the walk skips (sockets) the squashed tree's walk says; not again per layer.
    skipped: list[str] = []
    try:
        stack = [_Directory(b"", None, _items(lower_slash, upper_slash, b""))]
        lowers: list[bytes | None] = [lower_slash]
        while stack:
            directory = stack[-1]
            item = next(directory.items, None)
            if item is None:
                stack.pop()
                lowers.pop()
                continue
            name, is_whiteout = item
            rel = directory.rel + name
            if is_whiteout:
                yield from _parents(stack, upper_slash, source_date_epoch, inodes, skipped)
                yield Entry(
                    path=rel.decode("utf-8", "surrogateescape"), type=EntryType.WHITEOUT, mode=0, uid=0, gid=0
                )
                continue
            lower_dir = lowers[-1]
            above = upper_slash + rel
            below = lower_dir + name if lower_dir is not None else None
            upper_st = os.lstat(above)
            lower_st = _lstat(below) if below is not None else None
            changed = _changed(lower_st, upper_st, below, above, source_date_epoch)
            if stat.S_ISDIR(upper_st.st_mode):
                # Walked whatever its own entry: something below it may have changed.
                same_kind = lower_st is not None and stat.S_ISDIR(lower_st.st_mode)
                under = below + b"/" if same_kind and below is not None else None
                stack.append(_Directory(rel + b"/", upper_st, _items(under, upper_slash, rel + b"/")))
                lowers.append(under)
                if changed:
                    yield from _parents(stack, upper_slash, source_date_epoch, inodes, skipped)
                continue
            if not changed:
                continue
            yield from _parents(stack, upper_slash, source_date_epoch, inodes, skipped)
            entry = _entry(upper_slash, rel, upper_st, source_date_epoch, inodes, skipped)
            if entry is not None:
                yield entry
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename else os.fsdecode(upper_slash)
        raise BuildError(f"cannot compare the image trees at {where}: {exc.strerror or exc}") from exc


def _parents(
    stack: list[_Directory],
    upper_slash: bytes,
    source_date_epoch: int,
    inodes: dict[tuple[int, int], str],
    skipped: list[str],
) -> Iterator[Entry]:
    """The entries of the directories above (and, when just pushed, of) the current one not yet written."""
    for directory in stack:
        if directory.written or directory.st is None:
            continue
        directory.written = True
        entry = _entry(
            upper_slash, directory.rel.rstrip(b"/"), directory.st, source_date_epoch, inodes, skipped
        )
        if entry is not None:
            yield entry


def _entry(
    upper_slash: bytes,
    rel: bytes,
    st: os.stat_result,
    source_date_epoch: int,
    inodes: dict[tuple[int, int], str],
    skipped: list[str],
) -> Entry | None:
    xattrs = () if stat.S_ISLNK(st.st_mode) else carried_xattrs(upper_slash + rel)
    return make_entry(upper_slash, rel, st, xattrs, source_date_epoch, inodes, skipped)


def _items(lower_slash: bytes | None, upper_slash: bytes, rel: bytes) -> Iterator[tuple[bytes, bool]]:
    """A directory's work, sorted by name: ``(name, False)`` per entry it has, ``(name, True)`` per whiteout.

    A directory that kept none of its old entries gets one opaque whiteout, not one per name.
    """
    upper = sorted(os.listdir(upper_slash + rel))
    items: list[tuple[bytes, bool]] = [(name, False) for name in upper]
    if lower_slash is not None:
        gone = set(os.listdir(lower_slash)) - set(upper)
        if gone and len(gone) == len(os.listdir(lower_slash)):
            items.append((OPAQUE_WHITEOUT.encode(), True))
        else:
            items.extend((WHITEOUT_PREFIX.encode() + name, True) for name in gone)
        items.sort()
    return iter(items)


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _same_stat(lower: os.stat_result, upper: os.stat_result, source_date_epoch: int) -> bool:
    """Whether the two stats are recorded alike: the mtime as a layer records it, clamped.

    A directory a step only touched (a mount point made and removed in it) is then unchanged
    whatever second it happened in, so a layer's bytes do not depend on how fast a build ran.
    """
    return (
        lower.st_mode == upper.st_mode
        and lower.st_uid == upper.st_uid
        and lower.st_gid == upper.st_gid
        and _recorded_mtime(lower, source_date_epoch) == _recorded_mtime(upper, source_date_epoch)
    )


def _recorded_mtime(st: os.stat_result, source_date_epoch: int) -> int:
    return min(max(st.st_mtime_ns // 1_000_000_000, 0), source_date_epoch)


def _changed(
    lower: os.stat_result | None,
    upper: os.stat_result,
    below: bytes | None,
    above: bytes,
    source_date_epoch: int,
) -> bool:
    """Whether ``above`` is recorded otherwise than ``below`` (of a directory: its own entry only).

    A path not below, or of another kind, is changed; so is one whose stat a layer records
    otherwise. Same stat and ctime (and for a non-directory the same inode): unchanged unread.
    Otherwise the xattrs, a link's target, a file's content decide.
    """
    if lower is None or below is None or stat.S_IFMT(lower.st_mode) != stat.S_IFMT(upper.st_mode):
        return True
    if not _same_stat(lower, upper, source_date_epoch):
        return True
    directory = stat.S_ISDIR(upper.st_mode)
    if not directory and (
        lower.st_size != upper.st_size or lower.st_nlink != upper.st_nlink or lower.st_rdev != upper.st_rdev
    ):
        return True
    if lower.st_ctime_ns == upper.st_ctime_ns and (directory or lower.st_ino == upper.st_ino):
        return False
    if stat.S_ISLNK(upper.st_mode):
        return os.readlink(below) != os.readlink(above)
    if carried_xattrs(below) != carried_xattrs(above):
        return True
    return stat.S_ISREG(upper.st_mode) and not _same_content(below, above)


def _same_content(left: bytes, right: bytes) -> bool:
    first = os.open(left, _OPEN_FLAGS)
    try:
        second = os.open(right, _OPEN_FLAGS)
        try:
            while True:
                a, b = os.read(first, _CHUNK), os.read(second, _CHUNK)
                if a != b:
                    return False
                if not a:
                    return True
        finally:
            os.close(second)
    finally:
        os.close(first)
