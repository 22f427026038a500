"""The layers of a layered image: those kept from the base, and those the build made.

The builder says which trees the image's layers lie between and which blobs it keeps from
its base; the emitters write them (a made layer's entries come from dualbuild.layer.diff).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dualbuild.layer.tree import Tree


@dataclass(frozen=True, kw_only=True)
class KeptLayer:
    """A layer of the base image, copied into the outputs byte for byte.

    Attributes:
        blob: The blob's file, as the base had it (compressed or not).
        digest: ``sha256:<hex>`` of the blob.
        size: The blob's size in bytes.
        diff_id: ``sha256:<hex>`` of the uncompressed layer (the base config's).
        media_type: The OCI media type for the blob's compression.
    """

    blob: Path
    digest: str
    size: int
    diff_id: str
    media_type: str


@dataclass(frozen=True, kw_only=True)
class MadeLayer:
    """A layer of the build: what turns the tree ``lower`` (None: nothing) into ``upper``.

    Attributes:
        lower: The tree below (mounted), or None for the first layer of an image without a base.
        upper: The tree this layer ends at (mounted); None when ``entries`` are given.
        created_by: The layer's history line (the stage or the step it holds).
        entries: The layer's entries made already (of trees held in memory,
            dualbuild.layer.memtree), instead of the difference of two mounted trees.
    """

    lower: Path | None
    upper: Path | None
    created_by: str
    entries: Tree | None = None


@dataclass(frozen=True, kw_only=True)
class ImageLayers:
    """Every layer of a layered image, bottom to top: the kept ones, then the made ones.

    Attributes:
        kept: The base image's layers.
        history: The base config's history entries, as it has them (empty ones included).
        made: The build's layers.
    """

    kept: tuple[KeptLayer, ...] = ()
    history: tuple[Mapping[str, object], ...] = ()
    made: tuple[MadeLayer, ...] = ()
