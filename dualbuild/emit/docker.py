"""The Docker image tarball: one tar that `docker load` accepts and that is an OCI image layout.

Like modern ``docker save`` (image-formats.md §4.1): the blobs live in ``blobs/sha256/``,
``manifest.json`` points into them for Docker's loader, and ``oci-layout`` + ``index.json``
make the same file an OCI layout for containerd, skopeo and buildah.

The layer is an uncompressed tar, as ``docker save`` and containers/image write it: the blob
digest is then the diff_id, so the layer is hashed once; ``docker load`` spends no time
decompressing; and the archive's bytes depend on no compressor's version, so they are
reproducible anywhere. Compression for transport is the OCI archive's job.
"""

from __future__ import annotations

from pathlib import Path

from dualbuild.emit.artifact import Artifact, ImageSpec, written_sha256
from dualbuild.emit.oci import LayoutWriter, canonical_json, write_image
from dualbuild.files import atomic_output
from dualbuild.layer.feed import LayerSource, as_layer
from dualbuild.layer.tarwriter import Writable
from dualbuild.layer.tree import Tree
from dualbuild.recipe.model import Format, Image


def repo_tags(image: Image) -> list[str]:
    """``NAME:VERSION`` then ``NAME:TAG`` for every extra tag, without duplicates."""
    tags = [image.version, *(tag for tag in image.tags if tag != image.version)]
    return [f"{image.name}:{tag}" for tag in dict.fromkeys(tags)]


def emit_docker(
    layer: Tree | LayerSource, spec: ImageSpec, dest: Path, *, tap: Writable | None = None
) -> Artifact:
    """Write ``dest`` as a docker-archive that is also an OCI image layout.

    Args:
        layer: The image tree, or its layer from a shared feed.
        spec: Name, version and tags (the RepoTags), platform, annotations, runtime config.
        dest: The ``.docker.tar`` file to write (atomically).
        tap: Gets every byte of the finished file, in order.

    Returns:
        The artifact; ``image_id`` is what ``docker images`` shows as the image ID.
    """
    image, sde = spec.image, spec.source_date_epoch
    with atomic_output(dest) as file:
        layout = LayoutWriter(file, mtime=sde)
        result = write_image(layout, as_layer(layer, prefix="", mtime_clamp=sde), spec, Format.DOCKER)
        tags = repo_tags(image)
        manifest = [{"Config": result.config_path, "RepoTags": tags, "Layers": [result.layer_path]}]
        layout.add_file("manifest.json", canonical_json(manifest))
        # Legacy {repository: {tag: top layer id}}; current loaders read manifest.json, old
        # tools (docker2aci among them) still look for this file.
        layer_id = result.diff_id.removeprefix("sha256:")
        repositories = {image.name: {tag.rpartition(":")[2]: layer_id for tag in tags}}
        layout.add_file("repositories", canonical_json(repositories))
        layout.finish()
        sha256 = written_sha256(file, tap)
        size = file.tell()
    return result.artifact(Format.DOCKER, dest, sha256, size)
