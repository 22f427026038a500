"""The appc ACI: a gzip tar holding ``manifest``, an explicit ``rootfs`` directory, then the tree.

Layout and manifest rules: appc.md §1 and §2; mapping from the runtime config: DESIGN.md
"One config, three formats" (docker2aci's conventions where the spec leaves a choice).
``manifest`` comes first so readers (rkt's ``ManifestFromImage``) need not decompress the
whole image to find it. The image ID is ``sha512-`` of the uncompressed tar, hashed while
writing, so it does not depend on the compressor.

Two threads share the work: this one hashes the uncompressed tar (sha512, 450 MB/s without
SHA instructions), a :class:`BackgroundStage` compresses, checksums and writes it, and a tap
(the signer) gets the compressed bytes as they are written.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dualbuild.emit.artifact import LAYER_PREFIX, Artifact, ImageSpec, Stack
from dualbuild.emit.oci import canonical_json, rfc3339
from dualbuild.errors import BuildError
from dualbuild.files import atomic_output
from dualbuild.imageconfig import lost_fields
from dualbuild.layer.feed import LayerSource, as_layer
from dualbuild.layer.tarwriter import (
    BLOCK,
    BackgroundStage,
    GzipWriter,
    HashingWriter,
    Tee,
    Writable,
    padding,
    tar_header,
)
from dualbuild.layer.tree import Tree, resolve_ids
from dualbuild.recipe.model import Format
from dualbuild.recipe.rules import ENV_NAME

AC_VERSION = "0.8.11"


def aci_manifest(tree: Tree, spec: ImageSpec) -> dict[str, object]:
    """The ACI image manifest (what it cannot carry: imageconfig.lost_fields).

    Args:
        tree: The image tree; user and group names are resolved through its /etc files.
        spec: Name, version, platform, labels, annotations, runtime config, ``created``.

    Raises:
        BuildError: The user or group is a name the tree's /etc/passwd or /etc/group lacks.
    """
    image, config = spec.image, spec.config
    uid, gid = resolve_ids(tree, config.user, config.group)
    # appc requires user and group, as strings; numbers need no /etc lookup at run time.
    app: dict[str, object] = {
        "user": str(uid),
        "group": str(gid),
        "workingDirectory": config.workdir or "/",
    }
    exec_ = [*(config.entrypoint or ()), *(config.cmd or ())]
    if exec_:
        app["exec"] = exec_
    # appc 0.8.11 environment names (schema/types/environment.go); actool rejects others.
    environment = [{"name": name, "value": value} for name, value in config.env if ENV_NAME.fullmatch(name)]
    if environment:
        app["environment"] = environment
    if config.ports:
        app["ports"] = [
            {"name": port.name, "protocol": str(port.protocol), "port": port.port, "count": port.count}
            for port in config.ports
        ]
    if config.volumes:
        app["mountPoints"] = [
            {"name": volume.name, "path": volume.path, "readOnly": volume.read_only}
            for volume in config.volumes
        ]
    if config.labels:
        app["userLabels"] = dict(config.labels)
    annotations = {"created": rfc3339(spec.source_date_epoch), **image.annotations}
    # Keep Docker's entrypoint/cmd split, which exec flattens, as docker2aci does.
    for key, argv in (("appc.io/docker/entrypoint", config.entrypoint), ("appc.io/docker/cmd", config.cmd)):
        if argv is not None:
            annotations[key] = json.dumps(list(argv), separators=(",", ":"), ensure_ascii=False)
    manifest: dict[str, object] = {
        "acKind": "ImageManifest",
        "acVersion": AC_VERSION,
        "name": image.name,
        # rkt requires os and arch (appc names) when fetching by name (appc.md §2.3).
        "labels": [
            {"name": "version", "value": image.version},
            {"name": "os", "value": image.os},
            {"name": "arch", "value": image.arch.appc},
        ],
        "app": app,
        "annotations": [{"name": name, "value": annotations[name]} for name in sorted(annotations)],
    }
    if spec.aci_dependencies:
        # The tree is rendered from the dependencies (emit/acichain.py); this ACI holds none of it.
        manifest["dependencies"] = [dict(dependency) for dependency in spec.aci_dependencies]
        manifest["pathWhitelist"] = list(spec.path_whitelist)
    return manifest


def emit_aci(
    layer: Tree | LayerSource | Stack, spec: ImageSpec, dest: Path, *, tap: Writable | None = None
) -> Artifact:
    """Write ``dest`` as a gzip-compressed ACI.

    The ``rootfs`` entry is 0755 root:root like docker2aci's (the Docker layer has no entry
    for ``/`` either, so both formats give the container the same root directory).

    Args:
        layer: The image tree, or its layer under ``rootfs/`` from a shared feed.
        spec: Name, version, platform, labels, annotations, runtime config, ``created`` and
            the mtime clamp.
        dest: The ``.aci`` file to write (atomically).
        tap: Also gets every byte of the file, in order, as it is written.

    Returns:
        The artifact; ``image_id`` is ``sha512-<hex>`` of the uncompressed tar.

    Raises:
        BuildError: The user or group cannot be resolved (nothing is written then).
    """
    sde = spec.source_date_epoch
    if isinstance(layer, Stack):
        raise BuildError("an ACI holds the whole tree, not an image's layers")
    source = as_layer(layer, prefix=LAYER_PREFIX[Format.ACI], mtime_clamp=sde)
    document = canonical_json(aci_manifest(source.tree, spec))
    write_rootfs = source.write_to if not spec.aci_dependencies else _end_of_archive
    written = write_aci(dest, document, write_rootfs, mtime=sde, tap=tap)
    return Artifact(
        format=Format.ACI,
        path=dest,
        sha256=written.sha256,
        size=written.size,
        image_id=written.image_id,
        warnings=tuple(lost_fields(spec.config, Format.ACI)),
    )


def _end_of_archive(sink: Writable) -> None:
    sink.write(bytes(2 * BLOCK))


@dataclass(frozen=True, kw_only=True)
class WrittenAci:
    """An ACI file's identities: sha256 and size of the file, appc image ID of the tar."""

    sha256: str
    size: int
    image_id: str


def write_aci(
    dest: Path, manifest: bytes, write_rootfs: Callable[[Writable], None], *, mtime: int, tap: Writable | None
) -> WrittenAci:
    """Write ``dest`` (atomically): ``manifest``, the ``rootfs`` directory, then what ``write_rootfs`` writes.

    ``write_rootfs`` gets the uncompressed tar stream and writes the entries under ``rootfs/``
    and the end-of-archive marker.
    """
    with atomic_output(dest) as file:
        compressed = HashingWriter(Tee(file, tap), "sha256")
        gzip = GzipWriter(compressed)
        with BackgroundStage(gzip) as stage:
            raw = HashingWriter(stage, "sha512")
            raw.write(
                tar_header("manifest", tarfile.REGTYPE, mode=0o644, mtime=mtime, size=len(manifest))
                + manifest
                + padding(len(manifest))
                + tar_header(LAYER_PREFIX[Format.ACI].rstrip("/"), tarfile.DIRTYPE, mode=0o755, mtime=mtime)
            )
            write_rootfs(raw)
        gzip.close()
    return WrittenAci(
        sha256=compressed.hexdigest("sha256"),
        size=compressed.size,
        image_id=f"sha512-{raw.hexdigest('sha512')}",
    )
