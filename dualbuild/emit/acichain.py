"""The ACI as a dependency chain (``[output] aci_layers = "dependencies"``): one ACI per image layer.

What docker2aci's ``--nosquash`` makes of a Docker image, made from the build itself and with
the imageIDs pinned: every layer of the Docker image (the base's kept ones, the build's made
ones) becomes an ACI of its own, named like the image with the version label
``layer-<diff_id hex>``, holding the layer's entries under ``rootfs/`` without its whiteouts.
The image ACI depends on them in layer order and lists every path of the image's tree in its
pathWhitelist: appc's renderer (acirenderer) takes each path from the highest ACI that has it
and renders nothing the whitelist lacks, so what a whiteout removed on the Docker side is not
rendered either. A layer's ACI depends only on the layer, so two images share it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tarfile
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from dualbuild.archive import decompressed_stream
from dualbuild.emit.aci import AC_VERSION, emit_aci, write_aci
from dualbuild.emit.artifact import Artifact, ImageSpec
from dualbuild.emit.oci import canonical_json, rfc3339
from dualbuild.layer.diff import WHITEOUT_PREFIX, layer_tree
from dualbuild.layer.feed import DirectLayer
from dualbuild.layer.layers import ImageLayers, KeptLayer, MadeLayer
from dualbuild.layer.tarwriter import (
    BLOCK,
    CHUNK,
    HashingWriter,
    Writable,
    check_cancelled,
    padding,
    tar_header,
)
from dualbuild.layer.tree import Entry, EntryType, Tree, stream
from dualbuild.log import log
from dualbuild.recipe.model import Format, Image

_PREFIX = "rootfs/"


@dataclass(frozen=True, kw_only=True)
class LayerAci:
    """One layer's ACI as written: its file, version label and identities."""

    path: Path
    version: str
    sha256: str
    size: int
    image_id: str


def layer_version(diff_id: str) -> str:
    """The version label of a layer's ACI: the layer's diff_id, which names its content."""
    return "layer-" + diff_id.removeprefix("sha256:")


def layer_aci_name(image: Image, diff_id: str) -> str:
    """``{short name}-layer-<hex>-{os}-{arch}.aci``: named as the image's own ACI is."""
    return f"{image.short_name}-{layer_version(diff_id)}-{image.os}-{image.arch.file_part}.aci"


def dependency(image: Image, layer: LayerAci) -> dict[str, object]:
    """The image ACI's dependency on a layer's ACI: name, pinned imageID, labels."""
    return {
        "imageName": image.name,
        "imageID": layer.image_id,
        "labels": _labels(image, layer.version),
    }


def path_whitelist(root: Path, source_date_epoch: int) -> tuple[str, ...]:
    """Every path of the image's tree, absolute, in the walk's order (directories included)."""
    return tuple("/" + entry.path for entry in stream(root, source_date_epoch).entries)


def write_layer_aci(
    dest: Path, layer: KeptLayer | MadeLayer, diff_id: str, spec: ImageSpec, *, tap: Writable | None
) -> LayerAci:
    """Write one layer's ACI: its manifest, then the layer's entries under ``rootfs/``, whiteouts left out."""
    image, sde = spec.image, spec.source_date_epoch
    version = layer_version(diff_id)
    manifest = {
        "acKind": "ImageManifest",
        "acVersion": AC_VERSION,
        "name": image.name,
        "labels": _labels(image, version),
        "annotations": [{"name": "created", "value": rfc3339(sde)}],
    }
    if isinstance(layer, KeptLayer):

        def write_rootfs(sink: Writable) -> None:
            _copy_kept(layer.blob, sink)
    else:
        tree = layer_tree(layer, sde)
        kept = Tree(root=tree.root, entries=_without_whiteouts(tree), source_date_epoch=sde)
        write_rootfs = DirectLayer(kept, prefix=_PREFIX, mtime_clamp=sde).write_to
    written = write_aci(dest, canonical_json(manifest), write_rootfs, mtime=sde, tap=tap)
    return LayerAci(
        path=dest, version=version, sha256=written.sha256, size=written.size, image_id=written.image_id
    )


# Where a file's signature goes while it is written: a context giving the signer's tap.
Signer = Callable[[Path], AbstractContextManager[Writable]]


def write_aci_chain(
    root: Path,
    layers: ImageLayers,
    spec: ImageSpec,
    images: list[Artifact],
    dest: Path,
    *,
    signer: Signer | None,
    timings: MutableMapping[str, float],
) -> tuple[Artifact, list[LayerAci]]:
    """Write every layer's ACI beside ``dest``, then the image ACI ``dest`` depending on them.

    Args:
        root: The image's tree (its paths are the pathWhitelist; its /etc files resolve the user).
        layers: The image's layers that are not empty, as the Docker and OCI images hold them.
        spec: The image; the dependencies and the whitelist are added to it here.
        images: The Docker or OCI artifacts written before, whose diff_ids name the layers.
        dest: The image ACI.
        signer: Signs each file as it is written (None: unsigned).
        timings: Gets ``emit_aci`` (every ACI of the chain, signatures included).

    Returns:
        The image ACI's artifact, and each layer's ACI, bottom to top.
    """
    start = time.monotonic()
    every: list[KeptLayer | MadeLayer] = [*layers.kept, *layers.made]
    known = next((image.diff_ids for image in images if len(image.diff_ids) == len(every)), None)
    diff_ids = (
        known if known is not None else tuple(_diff_id(layer, spec.source_date_epoch) for layer in every)
    )
    written = []
    for layer, diff_id in zip(every, diff_ids, strict=True):
        path = dest.with_name(layer_aci_name(spec.image, diff_id))
        with _signing(signer, path) as tap:
            written.append(write_layer_aci(path, layer, diff_id, spec, tap=tap))
        log.info("wrote %s (%d bytes)", path.name, written[-1].size)
    chained = dataclasses.replace(
        spec,
        aci_dependencies=tuple(dependency(spec.image, layer) for layer in written),
        path_whitelist=path_whitelist(root, spec.source_date_epoch),
    )
    with _signing(signer, dest) as tap:
        artifact = emit_aci(
            Tree(root=root, entries=(), source_date_epoch=spec.source_date_epoch), chained, dest, tap=tap
        )
    for warning in artifact.warnings:
        log.warning("%s", warning)  # what run_emitters logs for an ACI it writes
    log.info("wrote %s (%d bytes), depending on %d layer ACIs", dest.name, artifact.size, len(written))
    timings[f"emit_{Format.ACI}"] = time.monotonic() - start
    return artifact, written


def _signing(signer: Signer | None, path: Path) -> AbstractContextManager[Writable | None]:
    return signer(path) if signer is not None else contextlib.nullcontext()


def _diff_id(layer: KeptLayer | MadeLayer, source_date_epoch: int) -> str:
    """A layer's diff_id when no Docker or OCI image was written: its tar hashed as they would write it."""
    if isinstance(layer, KeptLayer):
        return layer.diff_id
    hasher = HashingWriter(None, "sha256")
    entries = layer_tree(layer, source_date_epoch)
    DirectLayer(entries, prefix="", mtime_clamp=source_date_epoch).write_to(hasher)
    return hasher.digest()


def _labels(image: Image, version: str) -> list[dict[str, str]]:
    return [
        {"name": "version", "value": version},
        {"name": "os", "value": image.os},
        {"name": "arch", "value": image.arch.appc},
    ]


def _without_whiteouts(tree: Tree) -> Iterator[Entry]:
    return (entry for entry in tree.entries if entry.type is not EntryType.WHITEOUT)


def _copy_kept(blob: Path, sink: Writable) -> None:
    """A base layer's entries under ``rootfs/``, whiteouts left out, each header written again."""
    with blob.open("rb") as file, tarfile.open(fileobj=decompressed_stream(file), mode="r|") as tar:
        for member in tar:
            check_cancelled()
            name = member.name.removeprefix("./").strip("/")
            if not name or name == "." or name.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
                continue
            link = member.linkname
            if member.islnk():
                link = _PREFIX + link.removeprefix("./").lstrip("/")
            xattrs = tuple(
                sorted(
                    (key.removeprefix("SCHILY.xattr."), value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith("SCHILY.xattr.")
                )
            )
            size = member.size if member.isreg() else 0
            sink.write(
                tar_header(
                    _PREFIX + name + ("/" if member.isdir() else ""),
                    member.type if not member.isreg() else tarfile.REGTYPE,
                    mode=member.mode & 0o7777,
                    mtime=max(int(member.mtime), 0),
                    size=size,
                    uid=member.uid,
                    gid=member.gid,
                    linkname=link,
                    devmajor=member.devmajor,
                    devminor=member.devminor,
                    xattrs=xattrs,
                )
            )
            if size:
                content = tar.extractfile(member)
                assert content is not None
                while data := content.read(CHUNK):
                    sink.write(data)
                sink.write(padding(size))
    sink.write(bytes(2 * BLOCK))
