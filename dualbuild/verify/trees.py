"""Read a Docker tarball and an ACI back and prove they hold the same tree.

``dualbuild verify`` (DESIGN.md, "Rules the emitters share"): the two trees are streamed
once, entry by entry, and compared on path, type, mode, owner, content hash, link target,
device numbers and carried xattrs. The Docker side's own identities are recomputed on the
way: every layer's diff_id and the config digest (= the image ID), and for the OCI layout
view the manifest and blob digests; the archive's views must agree (``views``) and its
config must say what the ACI's manifest says (``configs``). Memory stays flat: only entries
that have not been matched yet are held, and for two archives in the same order that is at
most one each.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeGuard

from dualbuild.archive import DOCKER_ARCHIVE, check_one_image, decompressed_stream, read_aci_manifest
from dualbuild.errors import BuildError
from dualbuild.layer.tree import EntryType
from dualbuild.verify.configs import IdFiles, compare_with_aci
from dualbuild.verify.views import ListedImage, check_views

_CHUNK = 1 << 20
_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}
_XATTR = "SCHILY.xattr."


@dataclass(frozen=True, kw_only=True)
class ArchivedEntry:
    """One entry as an archive records it, with its content hashed."""

    path: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str = ""
    link_target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it."""

    def __init__(self, source: IO[bytes], algorithm: str) -> None:
        super().__init__()
        self._source = source
        self.hasher = hashlib.new(algorithm)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        self.hasher.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> str:
        """Hash the rest of the stream and return the hex digest."""
        while data := self._source.read(_CHUNK):
            self.hasher.update(data)
        return self.hasher.hexdigest()


def read_entries(
    source: IO[bytes], *, prefix: str = "", ids: IdFiles | None = None
) -> Iterator[ArchivedEntry]:
    """Stream the entries of a tar, hashing each file's content; names lose ``prefix``.

    Entries outside ``prefix`` (an ACI's ``manifest`` and the ``rootfs`` directory itself)
    are not yielded. ``ids`` keeps /etc/passwd and /etc/group as they pass.
    """
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if prefix:
                if not name.startswith(prefix):
                    continue
                name = name[len(prefix) :]
            kind = _TYPES.get(member.type)
            if kind is None:
                raise ValueError(f"{member.name}: unsupported tar entry type {member.type!r}")
            digest = ""
            if kind is EntryType.FILE:
                content = tar.extractfile(member)
                hasher = hashlib.sha256()
                kept: list[bytes] | None = [] if ids is not None and ids.wants(name, member.size) else None
                if content is not None:
                    while data := content.read(_CHUNK):
                        hasher.update(data)
                        if kept is not None:
                            kept.append(data)
                digest = hasher.hexdigest()
                if ids is not None and kept is not None:
                    ids.add_file(name, b"".join(kept))
            elif kind is EntryType.SYMLINK and ids is not None:
                ids.add_link(name, member.linkname)
            link = member.linkname
            if kind is EntryType.HARDLINK:
                link = link.removeprefix("./").removeprefix(prefix)
            xattrs = tuple(
                sorted(
                    (key[len(_XATTR) :], value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith(_XATTR)
                )
            )
            yield ArchivedEntry(
                path=name,
                type=kind,
                mode=member.mode,
                uid=member.uid,
                gid=member.gid,
                size=member.size if kind is EntryType.FILE else 0,
                sha256=digest,
                link_target=link,
                devmajor=member.devmajor if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
                devminor=member.devminor if kind in (EntryType.CHAR, EntryType.BLOCK) else 0,
                xattrs=xattrs,
            )


def compare_entries(
    left: Iterator[ArchivedEntry], right: Iterator[ArchivedEntry], names: tuple[str, str]
) -> list[str]:
    """Differences between two entry streams, matched by path (order may differ)."""
    differences: list[str] = []
    pending: tuple[dict[str, ArchivedEntry], dict[str, ArchivedEntry]] = ({}, {})
    sides = (left, right)
    exhausted = [False, False]
    while not all(exhausted):
        for side in (0, 1):
            if exhausted[side]:
                continue
            entry = next(sides[side], None)
            if entry is None:
                exhausted[side] = True
                continue
            other = pending[1 - side].pop(entry.path, None)
            if other is None:
                pending[side][entry.path] = entry
            else:
                pair = (entry, other) if side == 0 else (other, entry)
                differences.extend(_differ(pair[0], pair[1], names))
    for side in (0, 1):
        for path in pending[side]:
            differences.append(f"/{path}: only in the {names[side]}")
    return differences


_COMPARED = ("type", "mode", "uid", "gid", "size", "sha256", "link_target", "devmajor", "devminor", "xattrs")


def _differ(left: ArchivedEntry, right: ArchivedEntry, names: tuple[str, str]) -> list[str]:
    found = []
    for field in _COMPARED:
        a, b = getattr(left, field), getattr(right, field)
        if a != b:
            found.append(
                f"/{left.path}: {field} differs: {names[0]} {_show(field, a)}, {names[1]} {_show(field, b)}"
            )
    return found


def _show(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return oct(value)
    if isinstance(value, EntryType):
        return value.value
    return repr(value)


@dataclass(frozen=True, kw_only=True)
class _DockerImage:
    config_path: str
    layer_paths: tuple[str, ...]
    diff_ids: tuple[str, ...]
    config: dict[str, object]
    repo_tags: tuple[str, ...]
    annotations: dict[str, str]


def _docker_image(outer: tarfile.TarFile, differences: list[str]) -> _DockerImage | None:
    def member_bytes(name: str) -> bytes | None:
        try:
            content = outer.extractfile(name)
        except KeyError:
            content = None
        if content is None:
            differences.append(f"docker archive: {name} is missing")
            return None
        return content.read()

    raw_manifest = member_bytes("manifest.json")
    if raw_manifest is None:
        return None
    manifest = _json_of(raw_manifest, "manifest.json", differences)
    if not isinstance(manifest, list) or len(manifest) != 1:
        differences.append("docker archive: manifest.json must list exactly one image")
        return None
    item = manifest[0]
    config_path = item.get("Config") if isinstance(item, dict) else None
    layers = item.get("Layers") if isinstance(item, dict) else None
    repo_tags = item.get("RepoTags") if isinstance(item, dict) else None
    if not isinstance(config_path, str) or not _strings(layers):
        differences.append("docker archive: manifest.json's image needs a Config path and a list of Layers")
        return None
    config_bytes = member_bytes(config_path)
    if config_bytes is None:
        return None
    digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    if not config_path.endswith(digest.removeprefix("sha256:")):
        differences.append(f"docker archive: config {config_path} hashes to {digest}")
    config = _json_of(config_bytes, config_path, differences)
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(config, dict) or not _strings(diff_ids):
        differences.append(f"docker archive: config {config_path} has no rootfs.diff_ids list")
        return None
    if len(diff_ids) != len(layers):
        differences.append(f"docker archive: {len(layers)} layers but {len(diff_ids)} diff_ids")
    _check_oci_layout(outer, differences)
    listed = ListedImage(
        config_path=config_path, layer_paths=tuple(layers), config_bytes=config_bytes, config=config
    )
    annotations = check_views(outer, listed, differences)
    return _DockerImage(
        config_path=config_path,
        layer_paths=tuple(layers),
        diff_ids=tuple(diff_ids),
        config=config,
        repo_tags=tuple(repo_tags) if _strings(repo_tags) else (),
        annotations=annotations,
    )


def _json_of(raw: bytes, name: str, differences: list[str]) -> object:
    """The JSON in ``raw``; None (and a difference) when it is none, or nested past the parser."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        differences.append(f"docker archive: {name} is not JSON dualbuild can read ({type(error).__name__})")
        return None


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_oci_layout(outer: tarfile.TarFile, differences: list[str]) -> None:
    """Every blob of the OCI layout view must hash to its name."""
    for member in outer.getmembers():
        if not member.isfile() or not member.name.startswith("blobs/sha256/"):
            continue
        content = outer.extractfile(member)
        hasher = hashlib.sha256()
        while content is not None and (data := content.read(_CHUNK)):
            hasher.update(data)
        if hasher.hexdigest() != member.name.removeprefix("blobs/sha256/"):
            differences.append(f"docker archive: blob {member.name} hashes to sha256:{hasher.hexdigest()}")


def verify(docker_tar: Path, aci: Path) -> list[str]:
    """Compare a Docker tarball and an ACI: their trees, their configs, the Docker digests and views.

    Args:
        docker_tar: The ``.docker.tar`` holding one image with one layer (what dualbuild
            writes; stacked layers with whiteouts are not modelled).
        aci: The ``.aci``, plain or gzip.

    Returns:
        One line per difference; empty when both hold the same tree, the Docker config says
        what the ACI manifest says and the digests and the archive's views agree.
    """
    differences: list[str] = []
    try:
        with tarfile.open(docker_tar, mode="r:") as outer, aci.open("rb") as aci_file:
            try:
                # Readers take different views of an archive: they must all be of the one image.
                check_one_image(docker_tar, DOCKER_ARCHIVE)
            except BuildError as error:
                differences.append(f"docker archive: {error.message}")
            image = _docker_image(outer, differences)
            if image is None:
                return differences
            if len(image.layer_paths) != 1:
                return [*differences, f"docker archive: {len(image.layer_paths)} layers; verify compares one"]
            blob = outer.extractfile(image.layer_paths[0])
            if blob is None:
                return [*differences, f"docker archive: layer {image.layer_paths[0]} is missing"]
            layer = _HashingReader(decompressed_stream(blob), "sha256")
            ids = IdFiles()
            differences.extend(
                compare_entries(
                    read_entries(io.BufferedReader(layer, _CHUNK)),
                    read_entries(decompressed_stream(aci_file), prefix="rootfs/", ids=ids),
                    ("Docker layer", "ACI"),
                )
            )
            diff_id = "sha256:" + layer.finish()
            if image.diff_ids and diff_id != image.diff_ids[0]:
                differences.append(
                    f"docker archive: the layer's diff_id is {diff_id}, the config says {image.diff_ids[0]}"
                )
            differences.extend(_config_differences(image, aci, ids))
    except (OSError, EOFError, tarfile.TarError, ValueError, KeyError) as exc:
        differences.append(f"cannot read the artifacts: {exc}")
    return differences


def _config_differences(image: _DockerImage, aci: Path, ids: IdFiles) -> list[str]:
    """The Docker config against the ACI's manifest (the ACI's own tree gave ``ids``)."""
    try:
        manifest = read_aci_manifest(aci)
    except BuildError as error:
        return [f"ACI manifest: {error.message}"]
    return compare_with_aci(image.config, image.annotations, list(image.repo_tags), manifest, ids)
