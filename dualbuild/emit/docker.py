"""The Docker image tarball: one tar that `docker load` accepts and that is an OCI image layout.

Like ``docker save`` (image-formats.md §4.1): the blobs live in ``blobs/sha256/``,
``manifest.json`` points into them for Docker's loader, ``oci-layout`` + ``index.json`` make
the same file an OCI layout for containerd, skopeo and buildah, and ``repositories`` with one
``<v1 id>/`` folder (``VERSION``, ``json``, ``layer.tar``) is the legacy layout that readers
older than ``manifest.json`` (docker2aci among them) know alone. ``layer.tar`` is a symlink
to the layer's blob, as ``docker save`` and containers/image write it, so the layer's bytes
are stored once.

The layer is an uncompressed tar, as ``docker save`` and containers/image write it: the blob
digest is then the diff_id, so the layer is hashed once; ``docker load`` spends no time
decompressing; and the archive's bytes depend on no compressor's version, so they are
reproducible anywhere. Compression for transport is the OCI archive's job.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dualbuild.emit.artifact import Artifact, ImageSpec, Stack, written_sha256
from dualbuild.emit.oci import (
    LayoutResult,
    LayoutWriter,
    canonical_json,
    image_config,
    image_layers,
    image_tags,
    rfc3339,
    write_image,
)
from dualbuild.files import atomic_output
from dualbuild.layer.feed import LayerSource
from dualbuild.layer.tarwriter import Writable
from dualbuild.layer.tree import Tree
from dualbuild.recipe.model import Format, Image


def repo_tags(image: Image) -> list[str]:
    """``NAME:VERSION`` then ``NAME:TAG`` for every extra tag, without duplicates."""
    return [f"{image.name}:{tag}" for tag in image_tags(image)]


def legacy_image_json(spec: ImageSpec, result: LayoutResult) -> list[tuple[str, bytes]]:
    """The v1 id and ``<id>/json`` of every layer, bottom to top, as ``docker save`` wrote them.

    The top layer's json is the v1 image: the runtime config with the platform and ``created``;
    a layer below has its id, its parent's and ``created``. Ids are derived as Docker's
    ``v1.CreateID`` derives them, from the json, the layer's chain id and the parent's id, so
    another config gives another top id. A one-layer image's json is what it always was.
    """
    document = image_config(spec, list(result.diff_ids), fmt=Format.DOCKER)
    top: dict[str, object] = {
        key: document[key]
        for key in ("architecture", "variant", "os", "created", "config")
        if key in document
    }
    written: list[tuple[str, bytes]] = []
    chain_id = parent = ""
    for number, diff_id in enumerate(result.diff_ids):
        chain_id = (
            diff_id
            if not chain_id
            else "sha256:" + hashlib.sha256(f"{chain_id} {diff_id}".encode()).hexdigest()
        )
        v1: dict[str, object] = (
            top if number == len(result.diff_ids) - 1 else {"created": rfc3339(spec.source_date_epoch)}
        )
        if parent:
            v1 = {**v1, "parent": parent}
        layer_id = hashlib.sha256(canonical_json({**v1, "layer_id": chain_id})).hexdigest()
        written.append((layer_id, canonical_json({"id": layer_id, **v1})))
        parent = layer_id
    return written


def emit_docker(
    layer: Tree | LayerSource | Stack, spec: ImageSpec, dest: Path, *, tap: Writable | None = None
) -> Artifact:
    """Write ``dest`` as a docker-archive that is also an OCI image layout.

    Args:
        layer: The image tree, its layer from a shared feed, or a layered image's layers.
        spec: Name, version and tags (the RepoTags), platform, annotations, runtime config.
        dest: The ``.docker.tar`` file to write (atomically).
        tap: Gets every byte of the finished file, in order.

    Returns:
        The artifact; ``image_id`` is what ``docker images`` shows as the image ID.
    """
    image, sde = spec.image, spec.source_date_epoch
    with atomic_output(dest) as file:
        layout = LayoutWriter(file, mtime=sde)
        result = write_image(layout, image_layers(layer, sde), spec, Format.DOCKER)
        legacy = legacy_image_json(spec, result)
        for (layer_id, layer_json), layer_path in zip(legacy, result.layer_paths, strict=True):
            layout.add_directory(layer_id)
            layout.add_file(f"{layer_id}/VERSION", b"1.0")
            layout.add_file(f"{layer_id}/json", layer_json)
            layout.add_symlink(f"{layer_id}/layer.tar", f"../{layer_path}")
        layer_id = legacy[-1][0]
        tags = repo_tags(image)
        manifest = [{"Config": result.config_path, "RepoTags": tags, "Layers": list(result.layer_paths)}]
        layout.add_file("manifest.json", canonical_json(manifest))
        # Legacy {repository: {tag: top layer's v1 id}}: current loaders read manifest.json.
        repositories = {image.name: {tag.rpartition(":")[2]: layer_id for tag in tags}}
        layout.add_file("repositories", canonical_json(repositories))
        layout.finish()
        sha256 = written_sha256(file, tap)
        size = file.tell()
    return result.artifact(Format.DOCKER, dest, sha256, size)
