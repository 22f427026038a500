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
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from dualbuild.archive import DOCKER_ARCHIVE, check_one_image, decompressed_stream, read_aci_manifest
from dualbuild.errors import BuildError
from dualbuild.verify.configs import IdFiles, compare_with_aci
from dualbuild.verify.entries import HashingReader, compare_entries, read_entries
from dualbuild.verify.layers import AppliedLayers, render_chain, resolve_hardlinks
from dualbuild.verify.views import ListedImage, check_views

_CHUNK = 1 << 20


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
    history = config.get("history")
    if isinstance(history, list):
        # buildah and docker refuse an image whose history does not count its layers.
        counted = sum(1 for item in history if not (isinstance(item, dict) and item.get("empty_layer")))
        if counted != len(diff_ids):
            differences.append(
                f"docker archive: {counted} non-empty history entries for {len(diff_ids)} layers"
            )
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
        docker_tar: The ``.docker.tar`` holding one image: its layers are applied in order,
            whiteouts honoured (verify.layers).
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
            ids = IdFiles()
            try:
                manifest = read_aci_manifest(aci)
            except BuildError:
                manifest = {}  # said by the config comparison below
            chained = bool(manifest.get("dependencies"))
            if chained:
                # An ACI dependency chain: its tree is what rendering it gives, as rkt renders it.
                aci_entries = render_chain(aci, manifest, ids, differences)
            else:
                aci_entries = read_entries(decompressed_stream(aci_file), prefix="rootfs/", ids=ids)
            if len(image.layer_paths) == 1 and not chained:
                # One layer: both trees streamed side by side, nothing held.
                blob = outer.extractfile(image.layer_paths[0])
                if blob is None:
                    return [*differences, f"docker archive: layer {image.layer_paths[0]} is missing"]
                layer = HashingReader(decompressed_stream(blob), "sha256")
                differences.extend(
                    compare_entries(
                        read_entries(io.BufferedReader(layer, _CHUNK)), aci_entries, ("Docker layer", "ACI")
                    )
                )
                _check_diff_id(0, "sha256:" + layer.finish(), image, differences)
            else:
                applied = AppliedLayers()
                for number, path in enumerate(image.layer_paths):
                    blob = outer.extractfile(path)
                    if blob is None:
                        return [*differences, f"docker archive: layer {path} is missing"]
                    layer = HashingReader(decompressed_stream(blob), "sha256")
                    applied.apply(read_entries(io.BufferedReader(layer, _CHUNK)))
                    _check_diff_id(number, "sha256:" + layer.finish(), image, differences)
                differences.extend(
                    compare_entries(
                        applied.entries(), resolve_hardlinks(aci_entries), ("Docker layers", "ACI")
                    )
                )
            differences.extend(_config_differences(image, aci, ids))
    except (OSError, EOFError, tarfile.TarError, ValueError, KeyError) as exc:
        differences.append(f"cannot read the artifacts: {exc}")
    return differences


def _check_diff_id(number: int, diff_id: str, image: _DockerImage, differences: list[str]) -> None:
    if number < len(image.diff_ids) and diff_id != image.diff_ids[number]:
        differences.append(
            f"docker archive: layer {number + 1}'s diff_id is {diff_id},"
            f" the config says {image.diff_ids[number]}"
        )


def _config_differences(image: _DockerImage, aci: Path, ids: IdFiles) -> list[str]:
    """The Docker config against the ACI's manifest (the ACI's own tree gave ``ids``)."""
    try:
        manifest = read_aci_manifest(aci)
    except BuildError as error:
        return [f"ACI manifest: {error.message}"]
    return compare_with_aci(image.config, image.annotations, list(image.repo_tags), manifest, ids)
