"""A layered image's tree: its layers applied in order, as ``docker load`` applies them.

Rules (image-formats.md §4.1, moby's UnpackLayer): ``.wh.NAME`` removes NAME (and what is
below it) from the layers beneath; ``.wh..wh..opq`` removes everything in its directory the
layers beneath put there; an entry replaces what was at its path, a directory below it too
unless both are directories. The merged tree is held as entries (metadata and content
digests, never contents), so memory grows with the number of paths, not with their bytes.

Hard links are resolved to the file they share an inode with: a layered image and a squashed
tree may name a different path of the same inode first, and both hold the same files then.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from dualbuild.archive import decompressed_stream
from dualbuild.layer.tree import EntryType, encode_name
from dualbuild.verify.configs import IdFiles
from dualbuild.verify.entries import ArchivedEntry, HashingReader, read_entries

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


class AppliedLayers:
    """The tree that applying layers one after the other gives."""

    def __init__(self) -> None:
        self._entries: dict[str, ArchivedEntry] = {}
        self._children: dict[str, set[str]] = {"": set()}

    def apply(self, layer: Iterable[ArchivedEntry]) -> None:
        """Apply one layer's entries, in their order."""
        added: set[str] = set()
        for entry in layer:
            path = entry.path.strip("/")
            if not path or path == ".":
                continue
            parent, _, name = path.rpartition("/")
            if name == OPAQUE_WHITEOUT:
                for child in list(self._children.get(parent, ())):
                    if _join(parent, child) not in added:
                        self._remove(_join(parent, child))
                continue
            if name.startswith(WHITEOUT_PREFIX):
                self._remove(_join(parent, name[len(WHITEOUT_PREFIX) :]))
                continue
            existing = self._entries.get(path)
            if existing is not None and not (existing.type is EntryType.DIR and entry.type is EntryType.DIR):
                self._remove(path)
            if entry.type is EntryType.HARDLINK:
                entry = self._resolved(entry)
            self._entries[path] = dataclasses.replace(entry, path=path)
            self._children.setdefault(parent, set()).add(name)
            if entry.type is EntryType.DIR:
                self._children.setdefault(path, set())
            added.add(path)

    def entries(self) -> Iterator[ArchivedEntry]:
        """The merged tree, parents before children, siblings sorted by name bytes (the walk's order)."""
        for path in sorted(self._entries, key=_walk_order):
            yield self._entries[path]

    def _resolved(self, link: ArchivedEntry) -> ArchivedEntry:
        target = self._entries.get(link.link_target.strip("/"))
        if target is None:
            return link
        return dataclasses.replace(target, path=link.path)

    def _remove(self, path: str) -> None:
        if self._entries.pop(path, None) is None:
            return
        parent, _, name = path.rpartition("/")
        self._children.get(parent, set()).discard(name)
        for child in self._children.pop(path, set()):
            self._remove(_join(path, child))


def resolve_hardlinks(entries: Iterable[ArchivedEntry]) -> Iterator[ArchivedEntry]:
    """The entries with every hard link shown as the file it links to (see the module's note)."""
    files: dict[str, ArchivedEntry] = {}
    for entry in entries:
        if entry.type is EntryType.FILE:
            files[entry.path] = entry
        elif entry.type is EntryType.HARDLINK and entry.link_target in files:
            entry = dataclasses.replace(files[entry.link_target], path=entry.path)
        yield entry


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _walk_order(path: str) -> list[bytes]:
    return [encode_name(part) for part in path.split("/")]


def dependency_files(
    aci: Path, manifest: Mapping[str, object]
) -> list[tuple[Mapping[str, object], Path | None]]:
    """The ACIs an image ACI depends on, bottom to top, each with its file beside it (None: not there).

    A dependency's file is named as the image's is, with its version label for the image's
    (``{name}-{version}-{os}-{arch}.aci``, emit/acichain.py).
    """
    dependencies = manifest.get("dependencies")
    if not isinstance(dependencies, list):
        return []
    own = _version_of(manifest)
    short = str(manifest.get("name", "")).rsplit("/", 1)[-1]
    prefix = f"{short}-{own}-"
    found: list[tuple[Mapping[str, object], Path | None]] = []
    for dependency in dependencies:
        if not isinstance(dependency, dict):
            continue
        version = _version_of(dependency)
        name = f"{short}-{version}-{aci.name.removeprefix(prefix)}"
        path = aci.with_name(name) if own and version and aci.name.startswith(prefix) else None
        found.append((dependency, path if path is not None and path.is_file() else None))
    return found


def render_chain(
    aci: Path, manifest: Mapping[str, object], ids: IdFiles, differences: list[str]
) -> Iterator[ArchivedEntry]:
    """The tree rkt renders from an image ACI's dependencies (appc's acirenderer rules).

    Images are taken highest first (for one level of dependencies: the last listed first); a
    path comes from the first image that has it, when the image ACI's pathWhitelist lists it
    (directories too) and no path above it is rendered as something other than a directory.
    Each dependency's imageID must be the sha512 of its uncompressed tar.
    """
    whitelist_value = manifest.get("pathWhitelist")
    whitelist = (
        {str(path).strip("/") for path in whitelist_value} if isinstance(whitelist_value, list) else set()
    )
    rendered: dict[str, ArchivedEntry] = {}
    for dependency, path in reversed(dependency_files(aci, manifest)):
        version = _version_of(dependency)
        if path is None:
            differences.append(f"ACI chain: the ACI of dependency {version} is not beside {aci.name}")
            continue
        taken: list[str] = []
        layer_ids = IdFiles()
        with path.open("rb") as file:
            raw = HashingReader(decompressed_stream(file), "sha512")
            for entry in resolve_hardlinks(
                read_entries(io.BufferedReader(raw, 1 << 20), prefix=_ROOTFS, ids=layer_ids)
            ):
                name = entry.path.strip("/")
                if (
                    (whitelist and name not in whitelist)
                    or name in rendered
                    or _under_non_directory(name, rendered)
                ):
                    continue
                rendered[name] = dataclasses.replace(entry, path=name)
                taken.append(name)
            image_id = f"sha512-{raw.finish()}"
        if image_id != dependency.get("imageID"):
            differences.append(
                f"ACI chain: {path.name} is {image_id}, the image ACI pins {dependency.get('imageID')}"
            )
        ids.take(layer_ids, taken)
    for name in sorted(rendered, key=_walk_order):
        yield rendered[name]


_ROOTFS = "rootfs/"


def _under_non_directory(path: str, rendered: Mapping[str, ArchivedEntry]) -> bool:
    parent = path.rpartition("/")[0]
    while parent:
        above = rendered.get(parent)
        if above is not None and above.type is not EntryType.DIR:
            return True
        parent = parent.rpartition("/")[0]
    return False


def _version_of(manifest: Mapping[str, object]) -> str:
    labels = manifest.get("labels")
    for label in labels if isinstance(labels, list) else []:
        if isinstance(label, dict) and label.get("name") == "version":
            return str(label.get("value", ""))
    return ""
