"""What every emitter shares: its input (:class:`ImageSpec`), its result (:class:`Artifact`).

Each emitter has the same signature::

    emit(layer, spec, dest, *, tap=None) -> Artifact

and writes ``dest`` atomically (a temporary name in the same directory, renamed on success).
``layer`` is the tree itself (the emitter then reads it alone) or its subscription to a
:class:`~dualbuild.layer.feed.LayerFeed`, which :func:`dualbuild.emit.run_emitters` uses so the
tree is read once for every format. ``tap`` gets the file's bytes in order (the ACI's signer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dualbuild.files import sha256_stream
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.feed import LayerSource
from dualbuild.layer.layers import KeptLayer
from dualbuild.layer.tarwriter import Writable, check_cancelled
from dualbuild.layer.tree import Tree
from dualbuild.recipe.model import Format, Image


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """What every format says of the image besides its tree.

    Attributes:
        image: Name, version, tags, platform, labels, annotations.
        config: The runtime config.
        source_date_epoch: ``created`` fields, and the clamp of every mtime.
    """

    image: Image
    config: ImageConfig
    source_date_epoch: int
    # With aci_layers = "dependencies": the image ACI's dependencies (one ACI per layer, in
    # layer order) and its pathWhitelist (every path of the tree); it holds no files itself.
    aci_dependencies: tuple[Mapping[str, object], ...] = ()
    path_whitelist: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One written output file and the identities a release pipeline needs.

    Attributes:
        format: Which format this is.
        path: The file written.
        sha256: Hex sha256 of the file's bytes (what ``sha256sum`` prints).
        size: Size of the file in bytes.
        image_id: Docker/OCI: the config digest ``sha256:<hex>`` (Docker's image ID);
            ACI: ``sha512-<hex>`` of the uncompressed tar (the appc image ID).
        config_digest: Docker/OCI: digest of the image config blob; None for the ACI.
        manifest_digest: Docker/OCI: digest of the OCI image manifest; None for the ACI.
        diff_ids: Docker/OCI: sha256 of each uncompressed layer tar, bottom to top.
        layer_digests: Docker/OCI: digest of each layer blob as stored (compressed or not).
        warnings: What this format could not carry, one line each, naming field and format.
    """

    format: Format
    path: Path
    sha256: str
    size: int
    image_id: str
    config_digest: str | None = None
    manifest_digest: str | None = None
    diff_ids: tuple[str, ...] = ()
    layer_digests: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MadeLayerSource:
    """A layer the build made, as an image emitter gets it: its tar, and its history line."""

    source: LayerSource
    created_by: str


@dataclass(frozen=True, kw_only=True)
class Stack:
    """A layered image's layers as the Docker and OCI emitters get them, bottom to top.

    Attributes:
        kept: The base image's layers, copied byte for byte.
        history: The base config's history entries (one non-empty entry per kept layer).
        made: The build's layers, each read once.
    """

    kept: tuple[KeptLayer, ...] = ()
    history: tuple[Mapping[str, object], ...] = ()
    made: tuple[MadeLayerSource, ...] = ()

    def abandon(self) -> None:
        """Stop receiving every made layer (an emitter that failed must not hold up the producer)."""
        for layer in self.made:
            abandon = getattr(layer.source, "abandon", None)
            if abandon is not None:
                abandon()


class Emitter(Protocol):
    """Writes one format's file from the layer (or the image's layers) and the spec."""

    def __call__(
        self, layer: Tree | LayerSource | Stack, spec: ImageSpec, dest: Path, *, tap: Writable | None = None
    ) -> Artifact:
        """Write ``dest``; return what was written."""


# The name prefix of the tree's entries inside each format's archive (appc.md §1.3).
LAYER_PREFIX = {Format.DOCKER: "", Format.OCI: "", Format.ACI: "rootfs/"}


def written_sha256(file: BinaryIO, tap: Writable | None = None) -> str:
    """Hex sha256 of a whole file being written, read back from its start (also fed to ``tap``).

    Meant for a file written through :func:`dualbuild.files.atomic_output`: its writeback
    thread goes on flushing while the file is read back, so the final fsync finds little left.
    """
    file.flush()
    file.seek(0)
    return sha256_stream(file, also=tap.write if tap is not None else None, between=check_cancelled)
