"""A base's tree read into memory from its tarballs, its files' bytes left in them.

A rootfs tarball is read as GNU tar would extract it (dualbuild.builder.tarballs: the same
checks, the same refusals), an image's layers as its store applies them (``.wh.NAME`` removes a
lower path, ``.wh..wh..opq`` a directory's lower content, a directory over a directory keeps what
is in it). Only shapes whose result is certain are taken; for any other (an entry whose parent
the archive never made, a name twice, a sparse file, a hard link to another layer) the build
extracts the base as before, and :class:`NotHeld` says why.

A compressed tarball or layer is decompressed once into the build's scratch folder, so a file's
bytes can be read where they lie.
"""

from __future__ import annotations

import json
import lzma
import posixpath
import shutil
import tarfile
import time
import zlib
from pathlib import Path

from dualbuild.archive import (
    DOCKER_ARCHIVE,
    ZSTD_MAGIC,
    decompressed,
    decompressed_stream,
    is_compressed,
    is_compressed_magic,
)
from dualbuild.builder.tarballs import PlantedSymlinks, check_member
from dualbuild.builder.tarheaders import Unread, headers
from dualbuild.errors import BuildError, DualbuildError
from dualbuild.layer.archivefiles import ArchiveFiles
from dualbuild.layer.diff import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from dualbuild.layer.memtree import MemoryTree, Node
from dualbuild.layer.tree import EntryType

_CHUNK = 1 << 20
_MAX_DOCUMENT = 64 << 20
_XATTR_PAX = "SCHILY.xattr."
_CARRIED_XATTRS = ("security.capability",)
_CARRIED_PREFIXES = ("user.",)


class NotHeld(Exception):
    """A base the build does not read into memory; it is extracted instead. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def rootfs_tree(
    tarball: Path, scratch: Path, files: ArchiveFiles, what: str = "rootfs tarball"
) -> MemoryTree:
    """The tree a rootfs tarball extracts to.

    Raises:
        NotHeld: the tarball has a shape whose extraction is not certain.
        BuildError: an entry is unsafe (as extracting it would say), or the tarball is unreadable.
    """
    tree = MemoryTree(files)
    _apply(tree, _uncompressed(tarball, scratch, files), f"{what} {tarball.name}", layered=False)
    return tree


def archive_image(
    archive: Path, kind: str, scratch: Path, files: ArchiveFiles
) -> tuple[MemoryTree, dict[str, object]]:
    """The tree and the image config of a docker-archive or oci-archive, read where its layers lie.

    A docker-archive's layers are named by its manifest.json, an oci-archive's by the manifest its
    index.json names (keying checked that the archive holds one image).

    Raises:
        NotHeld: the archive or a layer has a shape whose reading is not certain.
        BuildError: a layer has an unsafe entry.
    """
    what = f"{kind}:{archive.name}"
    source = _uncompressed(archive, scratch, files)
    try:
        with tarfile.open(files.paths[source], mode="r:") as outer:
            members = {posixpath.normpath(member.name): member for member in outer.getmembers()}

            def document(name: str) -> object:
                member = members.get(posixpath.normpath(name))
                handle = outer.extractfile(member) if member is not None and member.isfile() else None
                if handle is None:
                    raise NotHeld(f"{what} has no file {name}")
                return json.loads(handle.read(_MAX_DOCUMENT))

            if kind == DOCKER_ARCHIVE:
                listed = document("manifest.json")
                first = listed[0] if isinstance(listed, list) and listed else {}
                config_name = first.get("Config") if isinstance(first, dict) else None
                layer_names = first.get("Layers") if isinstance(first, dict) else None
            else:
                index = document("index.json")
                manifests = index.get("manifests") if isinstance(index, dict) else None
                digest = manifests[0].get("digest") if isinstance(manifests, list) and manifests else None
                manifest = document(_blob(digest, what))
                config = manifest.get("config") if isinstance(manifest, dict) else None
                config_name = _blob(config.get("digest") if isinstance(config, dict) else None, what)
                layers = manifest.get("layers") if isinstance(manifest, dict) else None
                layer_names = [
                    _blob(d.get("digest") if isinstance(d, dict) else None, what) for d in layers or []
                ]
            if not isinstance(config_name, str) or not isinstance(layer_names, list):
                raise NotHeld(f"{what} names no config or layers")
            image_config = document(config_name)
            spans = []
            for name in layer_names:
                member = members.get(posixpath.normpath(str(name)))
                if member is None or not member.isfile():
                    raise NotHeld(f"{what}: its layer {name} is not a file of the archive")
                spans.append((member.offset_data, member.size))
    except (tarfile.TarError, ValueError, RecursionError, AttributeError, TypeError) as error:
        raise NotHeld(f"{what} cannot be read here ({error})") from None
    tree = MemoryTree(files)
    for number, (offset, size) in enumerate(spans, 1):
        layer = _layer_source(files, files.add(files.paths[source], start=offset, size=size), scratch, what)
        _apply(tree, layer, f"{what}, layer {number}", layered=True)
    return tree, image_config if isinstance(image_config, dict) else {}


def _blob(digest: object, what: str) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:") or "/" in digest:
        raise NotHeld(f"{what} names the blob {digest!r}")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _layer_source(files: ArchiveFiles, span: int, scratch: Path, what: str) -> int:
    """A layer inside an archive: the span itself when it is a plain tar, else a decompressed copy."""
    magic = files.read(span, 0, 10)
    if not is_compressed_magic(magic):
        return span
    if magic.startswith(ZSTD_MAGIC):
        raise NotHeld(f"{what} has a zstd layer")
    copy = scratch / f"held-{len(files.paths)}.tar"
    try:
        with files.open(span) as raw, decompressed_stream(raw) as stream, copy.open("xb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise NotHeld(f"{what}: a layer cannot be decompressed here ({error})") from None
    return files.add(copy)


def _uncompressed(path: Path, scratch: Path, files: ArchiveFiles) -> int:
    """The index in ``files`` of the uncompressed tar of ``path`` (itself, or a copy in ``scratch``)."""
    if not is_compressed(path):
        return files.add(path)
    copy = scratch / f"held-{len(files.paths)}.tar"
    try:
        with decompressed(path) as stream, copy.open("xb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, DualbuildError) as error:
        raise NotHeld(f"{path.name} cannot be decompressed here ({error})") from None
    return files.add(copy)


def _apply(tree: MemoryTree, source: int, where: str, *, layered: bool) -> None:
    """Add one tar's entries to ``tree`` (a layer: with its whiteouts applied).

    GNU tar restores a directory's mtime when it leaves the directory (at the first entry not
    below it): an entry added to it later sets its mtime to the time of extraction, and so it
    does here. A store restores every directory of a layer after the whole layer.
    """
    planted = PlantedSymlinks()
    seen: set[str] = set()
    # The directories whose times GNU tar restores later: the current entry's ancestors.
    restoring: list[str] = []
    now = int(time.time())
    try:
        with tree.files.open(source) as raw:
            for member in headers(raw):
                _check(member, planted, where, layered=layered)
                path = posixpath.normpath(member.name)
                if path in (".", ""):
                    continue  # the root: not an entry of the tree
                if path in seen:
                    raise NotHeld(f"{where} names /{path} twice")
                seen.add(path)
                name = posixpath.basename(path)
                parent = posixpath.dirname(path)
                if layered and parent and parent not in seen:
                    # The store would make the parent itself, with a mode and an mtime of its own.
                    raise NotHeld(f"{where} has /{path} without its parent directory")
                if layered and name.startswith(WHITEOUT_PREFIX):
                    _whiteout(tree, parent, name, seen, where)
                    continue
                parent_node = tree.node(parent)
                if parent_node is None or parent_node.type is not EntryType.DIR:
                    raise NotHeld(f"{where} has /{path} without its parent directory before it")
                while restoring and not path.startswith(restoring[-1] + "/"):
                    restoring.pop()
                touch = None if layered or not parent or restoring[-1:] == [parent] else now
                if member.islnk():
                    target = posixpath.normpath(member.linkname)
                    node = tree.node(target) if target in seen else None
                    if node is None or node.type is not EntryType.FILE:
                        raise NotHeld(f"{where} links /{path} to /{target}, not a file before it")
                    tree.link(path, target, touch=touch)
                    continue
                node = _node(member, source, where)
                below = tree.node(path)
                lower_xattrs = below.xattrs if below is not None and below.type is EntryType.DIR else ()
                if layered and node.type is EntryType.DIR and lower_xattrs and lower_xattrs != node.xattrs:
                    # Whether the lower directory's xattrs show through depends on the store's driver.
                    raise NotHeld(f"{where} has /{path} over a directory with other xattrs")
                tree.put(path, node, touch=touch)
                if node.type is EntryType.DIR:
                    restoring.append(path)
    except Unread as why:
        raise NotHeld(f"{where}: {why.reason}") from None
    except OSError as error:
        raise BuildError(f"{where} cannot be read: {error.strerror or error}") from None


def _check(member: tarfile.TarInfo, planted: PlantedSymlinks, where: str, *, layered: bool) -> None:
    """The checks and refusals of extracting it (dualbuild.builder.tarballs), word for word.

    An image's layer is applied by the store, which has rules of its own for such entries: the
    extracting build says what they are.
    """
    try:
        check_member(member, planted, where)
    except BuildError as refused:
        if layered:
            raise NotHeld(f"{where}: {refused.message}") from None
        raise
    if member.issparse():
        raise NotHeld(f"{where} has the sparse file {member.name!r}")
    if member.type == tarfile.REGTYPE and member.name.endswith("/"):
        # GNU tar makes a directory of it, tarfile a file: not certain.
        raise NotHeld(f"{where} has the regular file {member.name!r}, named as a directory")


def _whiteout(tree: MemoryTree, parent: str, name: str, seen: set[str], where: str) -> None:
    if name == OPAQUE_WHITEOUT:
        # Nothing the layers below put anywhere in the directory is left; this layer's own stay.
        _clear_below(tree, parent, seen)
        return
    target = name[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        raise NotHeld(f"{where} has the whiteout {posixpath.join(parent, name)!r} of no entry")
    gone = posixpath.join(parent, target)
    if gone in seen:
        raise NotHeld(f"{where} both adds and removes /{gone}")
    tree.remove(gone)


def _clear_below(tree: MemoryTree, directory: str, seen: set[str]) -> None:
    """Remove what lies below ``directory`` and is not this layer's (``seen``), at every depth."""
    for child in tree.names(directory):
        path = posixpath.join(directory, child)
        if path not in seen:
            tree.remove(path)
            continue
        node = tree.node(path)
        if node is not None and node.type is EntryType.DIR:
            _clear_below(tree, path, seen)


def _node(member: tarfile.TarInfo, source: int, where: str) -> Node:
    mtime = int(member.mtime)
    if member.isreg():
        kind = EntryType.FILE
    elif member.isdir():
        kind = EntryType.DIR
    elif member.issym():
        kind = EntryType.SYMLINK
    elif member.ischr():
        kind = EntryType.CHAR
    elif member.isblk():
        kind = EntryType.BLOCK
    elif member.isfifo():
        kind = EntryType.FIFO
    else:
        raise NotHeld(f"{where} has {member.name!r} of tar type {member.type!r}")
    return Node(
        kind, member.mode & 0o7777, member.uid, member.gid, mtime,
        size=member.size if kind is EntryType.FILE else 0,
        link_target=member.linkname if kind is EntryType.SYMLINK else "",
        devmajor=member.devmajor if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
        devminor=member.devminor if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
        # The kernel takes user.* only on files and directories, a capability only on files.
        xattrs=_xattrs(member, kind) if kind in (EntryType.FILE, EntryType.DIR) else (),
        source=source if kind is EntryType.FILE else -1,
        offset=member.offset_data if kind is EntryType.FILE else 0,
    )  # fmt: skip


def _xattrs(member: tarfile.TarInfo, kind: EntryType) -> tuple[tuple[str, bytes], ...]:
    """The carried xattrs of an entry: what GNU tar restores of them (--xattrs-include)."""
    found = []
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PAX):
            continue
        name = key[len(_XATTR_PAX) :]
        if (name in _CARRIED_XATTRS and kind is EntryType.FILE) or name.startswith(_CARRIED_PREFIXES):
            found.append((name, value.encode("utf-8", "surrogateescape")))
    return tuple(sorted(found))
