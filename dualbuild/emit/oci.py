"""OCI image layout archives, and the Docker/OCI image JSON shared with the docker emitter.

``NAME.oci.tar`` is an OCI image layout (image-formats.md §4.2) in a tar: ``oci-layout``,
``index.json`` and ``blobs/sha256/`` holding one gzip layer, the config and the manifest.
The docker emitter writes the same layout and adds Docker's ``manifest.json``, ``repositories``
and the legacy per-layer folder (image-formats.md §4.1), as ``docker save`` does.

A blob's name is its digest, and a tar header comes before its data, so the layer entry is
written with a placeholder header that is patched once the layer is complete. The output
is a regular file, so seeking back costs nothing; the alternative, hashing the tree in a
first pass, would read every file of the tree twice. The patch is also why the file's own
sha256 is computed by reading the finished file back (sequential, and usually still in the
page cache) instead of while writing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dualbuild.emit.artifact import Artifact, ImageSpec, Stack, written_sha256
from dualbuild.errors import BuildError
from dualbuild.files import atomic_output
from dualbuild.imageconfig import lost_fields
from dualbuild.layer.feed import LayerSource, as_layer
from dualbuild.layer.layers import KeptLayer
from dualbuild.layer.tarwriter import (
    BLOCK,
    CHUNK,
    BackgroundStage,
    GzipWriter,
    HashingWriter,
    Writable,
    check_cancelled,
    padding,
    tar_header,
)
from dualbuild.layer.tree import Tree
from dualbuild.recipe.model import Format, Image

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
# containerd (and Docker with the containerd image store) and podman name an image loaded from
# an OCI layout after this annotation, as `docker save` writes it.
CONTAINERD_NAME = "io.containerd.image.name"
_USTAR_MAX_SIZE = 8**11


def canonical_json(value: object) -> bytes:
    """JSON with sorted keys and no spaces: the same object always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(epoch: int) -> str:
    """``2023-11-14T22:13:20Z`` for a Unix time."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(
    spec: ImageSpec, diff_ids: list[str], *, fmt: Format, stack: Stack | None = None
) -> dict[str, object]:
    """The image config JSON (Docker image spec v1.2 / OCI config) of ``fmt``.

    Args:
        spec: Name, platform, runtime config and ``created``.
        diff_ids: sha256 of each uncompressed layer.
        fmt: Docker carries Docker's ``Healthcheck``; the OCI config has no such field.
        stack: A layered image's layers (their history); None for one squashed layer.
    """
    image, config = spec.image, spec.config
    runtime: dict[str, object] = {}
    if config.docker_user:
        runtime["User"] = config.docker_user
    if config.env:
        runtime["Env"] = [f"{name}={value}" for name, value in config.env]
    if config.entrypoint is not None:
        runtime["Entrypoint"] = list(config.entrypoint)
    if config.cmd is not None:
        runtime["Cmd"] = list(config.cmd)
    if config.workdir:
        runtime["WorkingDir"] = config.workdir
    if config.ports:
        # A port range (count > 1) is one key per port, as Dockerfile's EXPOSE 8000-8002 does.
        runtime["ExposedPorts"] = {
            f"{port.port + offset}/{port.protocol}": {}
            for port in config.ports
            for offset in range(port.count)
        }
    if config.volumes:
        # An image config cannot mark a volume read-only (imageconfig.lost_fields says so).
        runtime["Volumes"] = {volume.path: {} for volume in config.volumes}
    if config.labels:
        runtime["Labels"] = dict(config.labels)
    if config.stop_signal:
        runtime["StopSignal"] = config.stop_signal
    check = config.healthcheck
    if check is not None and fmt is Format.DOCKER:
        test = ["CMD-SHELL", " ".join(check.cmd)] if check.shell else ["CMD", *check.cmd]
        fields: dict[str, object] = {"Test": test}
        for key, value in (
            ("Interval", check.interval_ns),
            ("Timeout", check.timeout_ns),
            ("StartPeriod", check.start_period_ns),
            ("Retries", check.retries),
        ):
            if value is not None:
                fields[key] = value
        runtime["Healthcheck"] = fields
    created = rfc3339(spec.source_date_epoch)
    document: dict[str, object] = {
        "architecture": image.arch.docker_architecture,
        "os": image.os,
        "created": created,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": _history(stack, created)
        if stack is not None
        else [{"created": created, "created_by": "dualbuild"}],
    }
    if image.arch.docker_variant:
        document["variant"] = image.arch.docker_variant
    return document


def _history(stack: Stack, created: str) -> list[dict[str, object]]:
    """One non-empty history entry per layer, as Docker and buildah require.

    The base's entries are kept as they are; a base whose history does not count its layers
    (some tools write none) gets one entry per layer instead.
    """
    base = [dict(entry) for entry in stack.history]
    if sum(1 for entry in base if not entry.get("empty_layer")) != len(stack.kept):
        base = [{"created": created, "created_by": "a layer of the base image"} for _ in stack.kept]
    return base + [{"created": created, "created_by": layer.created_by} for layer in stack.made]


def image_tags(image: Image) -> list[str]:
    """The version, then every extra tag, without duplicates."""
    return list(dict.fromkeys([image.version, *image.tags]))


def normalized_reference(name: str, tag: str) -> str:
    """``name:tag`` fully qualified the way Docker normalizes it (``hello`` → docker.io/library/hello)."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return f"{name}:{tag}"
    if not rest:
        return f"docker.io/library/{name}:{tag}"
    return f"docker.io/{name}:{tag}"


@dataclass(frozen=True, kw_only=True)
class LayoutResult:
    """What writing an image into a layout produced."""

    config_digest: str
    manifest_digest: str
    diff_ids: tuple[str, ...]
    layer_paths: tuple[str, ...]
    layer_digests: tuple[str, ...]
    config_path: str
    warnings: tuple[str, ...]

    def artifact(self, fmt: Format, dest: Path, sha256: str, size: int) -> Artifact:
        """The Artifact of a finished image file holding this layout."""
        return Artifact(
            format=fmt,
            path=dest,
            sha256=sha256,
            size=size,
            image_id=self.config_digest,
            config_digest=self.config_digest,
            manifest_digest=self.manifest_digest,
            diff_ids=self.diff_ids,
            layer_digests=self.layer_digests,
            warnings=self.warnings,
        )


class LayoutWriter:
    """The outer tar of an OCI image layout, written to a seekable file in a fixed order.

    Outer entries are owned by 0:0, mode 0644 (directories 0755, symlinks 0777), mtime
    SOURCE_DATE_EPOCH.
    """

    def __init__(self, file: BinaryIO, *, mtime: int) -> None:
        self._file = file
        self._mtime = mtime
        for directory in ("blobs/", "blobs/sha256/"):
            file.write(tar_header(directory, tarfile.DIRTYPE, mode=0o755, mtime=mtime))

    def add_file(self, name: str, data: bytes) -> None:
        """Add a small regular file."""
        self._file.write(tar_header(name, tarfile.REGTYPE, mode=0o644, mtime=self._mtime, size=len(data)))
        self._file.write(data)
        self._file.write(padding(len(data)))

    def add_directory(self, name: str) -> None:
        """Add a directory entry (``name`` without its trailing slash)."""
        self._file.write(tar_header(f"{name}/", tarfile.DIRTYPE, mode=0o755, mtime=self._mtime))

    def add_symlink(self, name: str, target: str) -> None:
        """Add a symbolic link to ``target``, relative to the link's folder."""
        self._file.write(tar_header(name, tarfile.SYMTYPE, mode=0o777, mtime=self._mtime, linkname=target))

    def add_blob(self, data: bytes, media_type: str) -> dict[str, object]:
        """Add a blob under its digest and return its descriptor."""
        hasher = HashingWriter(None, "sha256")
        hasher.write(data)
        self.add_file(f"blobs/sha256/{hasher.hexdigest('sha256')}", data)
        return {"mediaType": media_type, "digest": hasher.digest(), "size": len(data)}

    def add_layer(self, layer: LayerSource, *, compress: bool) -> tuple[str, dict[str, object]]:
        """Stream the layer as one blob; returns its diff_id and its descriptor."""
        start = self._file.tell()
        self._file.write(bytes(BLOCK))  # placeholder for the header, patched below
        blob = HashingWriter(self._file, "sha256")
        gzip = GzipWriter(blob) if compress else None
        with contextlib.ExitStack() as stack:
            # Compression and the raw digest on two cores (see dualbuild.emit.aci).
            below: Writable = stack.enter_context(BackgroundStage(gzip)) if gzip is not None else blob
            raw = HashingWriter(below, "sha256")
            layer.write_to(raw)
        if gzip is not None:
            gzip.close()
        self._file.write(padding(blob.size))
        end = self._file.tell()
        self._file.seek(start)
        self._file.write(self._blob_header(f"blobs/sha256/{blob.hexdigest('sha256')}", blob.size))
        self._file.seek(end)
        media_type = MEDIA_LAYER_GZIP if compress else MEDIA_LAYER
        return raw.digest(), {"mediaType": media_type, "digest": blob.digest(), "size": blob.size}

    def add_kept_layer(self, layer: KeptLayer) -> tuple[str, dict[str, object]]:
        """Copy a base image's layer blob as it is; returns its diff_id and its descriptor.

        Raises:
            BuildError: the blob is not the one the base named (changed since it was copied).
        """
        self._file.write(
            tar_header(f"blobs/sha256/{layer.digest.removeprefix('sha256:')}", tarfile.REGTYPE, mode=0o644,
                       mtime=self._mtime, size=layer.size)
        )  # fmt: skip
        blob = HashingWriter(self._file, "sha256")
        with layer.blob.open("rb") as source:
            while data := source.read(CHUNK):
                check_cancelled()
                blob.write(data)
        if blob.size != layer.size or blob.digest() != layer.digest:
            raise BuildError(f"the base image's layer {layer.digest} changed since it was copied")
        self._file.write(padding(blob.size))
        return layer.diff_id, {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}

    def finish(self) -> None:
        """Write the end-of-archive marker."""
        self._file.write(bytes(2 * BLOCK))

    def _blob_header(self, name: str, size: int) -> bytes:
        # Exactly one block, to fit the placeholder: ustar up to 8 GiB, then GNU base-256 for
        # the size (Go's archive/tar, which docker load uses, reads both).
        if size < _USTAR_MAX_SIZE:
            header = tar_header(name, tarfile.REGTYPE, mode=0o644, mtime=self._mtime, size=size)
        else:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, self._mtime, "", ""
            header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        assert len(header) == BLOCK, "a blob header must fit its placeholder"
        return header


def write_image(
    layout: LayoutWriter, layers: LayerSource | Stack, spec: ImageSpec, fmt: Format
) -> LayoutResult:
    """Write the layers, config, manifest, ``index.json`` and ``oci-layout`` into a layout.

    The OCI archive's own layers are gzip; the Docker archive's plain tars (see emit/docker.py);
    a base image's layers are copied as they are in both. The Docker archive's index names the
    image once per tag, the OCI archive's once, by its version.

    Args:
        layout: The archive being written.
        layers: The image tree's one layer, or a layered image's layers.
        spec: Identity, platform, runtime config and ``created``.
        fmt: Docker or OCI.

    Returns:
        Digests and paths of what was written.
    """
    image = spec.image
    stack = layers if isinstance(layers, Stack) else None
    kept, made = (stack.kept, [layer.source for layer in stack.made]) if stack is not None else ((), [layers])
    written = [layout.add_kept_layer(layer) for layer in kept]
    written += [
        layout.add_layer(source, compress=fmt is Format.OCI)
        for source in made
        if not isinstance(source, Stack)
    ]
    diff_ids = [diff_id for diff_id, _ in written]
    layer_descriptors = [descriptor for _, descriptor in written]
    document = image_config(spec, diff_ids, fmt=fmt, stack=stack)
    config_descriptor = layout.add_blob(canonical_json(document), MEDIA_CONFIG)
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_descriptor,
        "layers": layer_descriptors,
    }
    if image.annotations:
        manifest["annotations"] = dict(image.annotations)
    manifest_descriptor = layout.add_blob(canonical_json(manifest), MEDIA_MANIFEST)
    platform = {"architecture": image.arch.docker_architecture, "os": image.os}
    if image.arch.docker_variant:
        platform["variant"] = image.arch.docker_variant
    # One descriptor per tag, as `docker save` and containerd's exporter write them, in the
    # Docker archive only: podman load and `oci-archive:FILE` without a tag (skopeo, buildah)
    # refuse an OCI archive of several descriptors ("more than one image in oci"). Refused
    # there, podman reads the Docker archive's manifest.json, which names every tag too.
    tags = image_tags(image) if fmt is Format.DOCKER else [image.version]
    descriptors = [
        {
            **manifest_descriptor,
            "platform": platform,
            # ref.name is the bare tag (what `oci-archive:FILE:TAG` selects, as the OCI spec
            # suggests); podman and containerd name the image after io.containerd.image.name.
            "annotations": {REF_NAME: tag, CONTAINERD_NAME: normalized_reference(image.name, tag)},
        }
        for tag in tags
    ]
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": descriptors}
    layout.add_file("index.json", canonical_json(index))
    layout.add_file("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
    return LayoutResult(
        config_digest=str(config_descriptor["digest"]),
        manifest_digest=str(manifest_descriptor["digest"]),
        diff_ids=tuple(diff_ids),
        layer_paths=tuple(
            f"blobs/sha256/{str(d['digest']).removeprefix('sha256:')}" for d in layer_descriptors
        ),
        layer_digests=tuple(str(d["digest"]) for d in layer_descriptors),
        config_path=f"blobs/sha256/{str(config_descriptor['digest']).removeprefix('sha256:')}",
        warnings=tuple(lost_fields(spec.config, fmt)),
    )


def emit_oci(
    layer: Tree | LayerSource | Stack, spec: ImageSpec, dest: Path, *, tap: Writable | None = None
) -> Artifact:
    """Write ``dest`` as an OCI image layout archive: its own layers gzip, a base's as they are.

    Args:
        layer: The image tree, its layer from a shared feed, or a layered image's layers.
        spec: Identity, platform, runtime config (its healthcheck is dropped with a warning).
        dest: The ``.oci.tar`` file to write (atomically).
        tap: Gets every byte of the finished file, in order.

    Returns:
        The artifact with its config, manifest and layer digests.
    """
    sde = spec.source_date_epoch
    with atomic_output(dest) as file:
        layout = LayoutWriter(file, mtime=sde)
        result = write_image(layout, image_layers(layer, sde), spec, Format.OCI)
        layout.finish()
        sha256 = written_sha256(file, tap)
        size = file.tell()
    return result.artifact(Format.OCI, dest, sha256, size)


def image_layers(layer: Tree | LayerSource | Stack, mtime_clamp: int) -> LayerSource | Stack:
    """What an image emitter writes: a layered image's layers as given, a tree as its one layer."""
    if isinstance(layer, Stack):
        return layer
    return as_layer(layer, prefix="", mtime_clamp=mtime_clamp)
