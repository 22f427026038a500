"""Where a layered image's layers end, the trees there, and the base image's own layers.

``[output] layers`` (DESIGN.md, "Recipe format v1.1"): with ``"stages"`` a layer ends where each
stage of the final stage's ``from`` chain ends, with ``"steps"`` after every step of them. Below
them lie the base image's own layers, kept byte for byte (a registry, docker-archive or
oci-archive base), or one layer of the base's tree (rootfs, bootstrap, ACI). While the stages
build, :class:`LayerTrees` records the image (cache entry or a commit of the session) of every
tree a layer ends at; afterwards each is mounted, and the emitters write each layer as the
difference of two neighbouring trees.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import run
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.keys import KeyedPlan
from dualbuild.errors import BuildError, CommandError
from dualbuild.layer.layers import ImageLayers, KeptLayer, MadeLayer
from dualbuild.log import log
from dualbuild.plan import BuildPlan, PlannedStage
from dualbuild.recipe.model import ArchiveBase, Layering, RegistryBase, StageBase

MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
_COMPRESSED_MEDIA = {
    b"\x1f\x8b": "application/vnd.oci.image.layer.v1.tar+gzip",
    b"\x28\xb5\x2f\xfd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
_MAX_JSON = 64 << 20


def from_chain(plan: BuildPlan) -> tuple[PlannedStage, ...]:
    """The final stage and the stages it is built on (``from = "stage:..."``), bottom first."""
    by_name = {stage.name: stage for stage in plan.stages}
    chain = [plan.final_stage]
    while isinstance(chain[-1].base, StageBase):
        chain.append(by_name[chain[-1].base.stage])
    return tuple(reversed(chain))


@dataclass
class LayerTrees:
    """The trees a layered image's layers lie between, recorded while the stages build."""

    plan: BuildPlan
    layering: Layering
    _images: dict[tuple[str, int], str] = field(default_factory=dict)
    _roots: dict[tuple[str, int], Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.chain = from_chain(self.plan) if self.layering is not Layering.SQUASH else ()
        self._names = {stage.name for stage in self.chain}

    @property
    def layered(self) -> bool:
        """Whether the image has layers of its own (not one squashed layer)."""
        return self.layering is not Layering.SQUASH

    def needed(self, stage: str, number: int) -> bool:
        """Whether a layer ends at this position (0: the stage's base) of this stage."""
        if stage not in self._names:
            return False
        if number == 0:
            return True
        last = len(next(s for s in self.chain if s.name == stage).steps)
        return self.layering is Layering.STEPS or number == last

    def record_image(self, stage: str, number: int, image: str) -> None:
        """The tree at this position is the image ``image`` (a cache entry or a session commit)."""
        if self.needed(stage, number):
            self._images[(stage, number)] = image

    def recorded(self, stage: str, number: int) -> bool:
        """Whether the tree at this position is known already."""
        return (stage, number) in self._images or (stage, number) in self._roots

    def record_root(self, stage: str, number: int, root: Path) -> None:
        """The tree at this position is mounted at ``root`` and stays so until the session ends."""
        if self.needed(stage, number):
            self._roots[(stage, number)] = root

    def image_layers(
        self, buildah: Buildah, kept: tuple[KeptLayer, ...], history: tuple[Mapping[str, object], ...]
    ) -> ImageLayers:
        """The layers, bottom to top, their trees mounted (removed with the session's containers).

        A tree that went from the cache meanwhile (a prune) is left out: its layer and the next
        become one, which holds the same files.
        """
        made: list[MadeLayer] = []
        below: Path | None = None
        for stage in self.chain:
            # Each stage's layers start at the tree its container was made from, not at the end
            # of the stage before (the same files, but a copy): files neither side touched are
            # then one inode, and compared without being read (dualbuild.layer.diff).
            trees = [
                (number, self._root(buildah, stage.name, number))
                for number in range(len(stage.steps) + 1)
                if self.needed(stage.name, number)
            ]
            found: list[tuple[int, Path | None]] = [
                (number, root) for number, root in trees if root is not None
            ]
            if not found:
                continue
            if stage is self.chain[0] and not kept:
                # A base that is not an image (rootfs, bootstrap, ACI; scratch: empty) is one layer.
                base_tree = found[0][1]
                assert base_tree is not None
                made.append(
                    MadeLayer(lower=None, upper=base_tree, created_by=history_line(self.layering, stage, 0))
                )
            elif found[0][0] != 0:
                found.insert(0, (0, below))
            for (_, lower), (number, upper) in itertools.pairwise(found):
                assert upper is not None
                made.append(
                    MadeLayer(lower=lower, upper=upper, created_by=history_line(self.layering, stage, number))
                )
            below = found[-1][1]
        return ImageLayers(kept=kept, history=history, made=tuple(made))

    def _root(self, buildah: Buildah, stage: str, number: int) -> Path | None:
        root = self._roots.get((stage, number))
        image = self._images.get((stage, number))
        # A stage's working tree is its last one; its steps' trees are commits of it, so with
        # "steps" the last is taken as committed too (the neighbours then share their layers).
        if root is not None and (image is None or self.layering is not Layering.STEPS):
            return root
        if image is None:
            return None
        try:
            container = buildah.new_container(image, label="layer")
        except CommandError as error:
            if "image not known" not in error.output_tail and "unknown image" not in error.output_tail:
                raise
            log.warning(
                "the cached tree of %s step %d went meanwhile; its layer joins the next", stage, number
            )
            return None
        return buildah.mount(container)


def image_layers(
    trees: LayerTrees,
    keyed: KeyedPlan,
    buildah: Buildah,
    *,
    directory: Path,
    tls_verify: bool,
    authfile: Path | None,
) -> ImageLayers:
    """A built image's layers: the base image's own (copied into ``directory``), then the made ones."""
    first = trees.chain[0]
    stage = next(k for k in keyed.stages if k.stage.name == first.name)
    kept, history = base_layers(
        first, base_file=stage.base_file, image_id=stage.image_id, buildah=buildah, directory=directory,
        tls_verify=tls_verify, authfile=authfile,
    )  # fmt: skip
    if kept and not trees.recorded(first.name, 0):
        # The made layers' bottom tree is the base image's (its position 0 is that tree as committed).
        if isinstance(first.base, ArchiveBase):
            trees.record_image(first.name, 0, buildah.pull(f"{first.base.kind}:{stage.base_file}"))
        elif stage.image_id is not None:
            trees.record_image(first.name, 0, stage.image_id)
    return trees.image_layers(buildah, kept, history)


def history_line(layering: Layering, stage: PlannedStage, number: int) -> str:
    """The ``created_by`` of the layer that ends at this position of the stage."""
    if number == 0:
        return f"dualbuild: from {stage.base.describe()}"
    if layering is Layering.STEPS:
        return f"dualbuild: stage {stage.name} step {number}: {stage.steps[number - 1].summary}"
    return f"dualbuild: stage {stage.name}"


def base_layers(
    stage: PlannedStage,
    *,
    base_file: Path | None,
    image_id: str | None,
    buildah: Buildah,
    directory: Path,
    tls_verify: bool,
    authfile: Path | None,
) -> tuple[tuple[KeptLayer, ...], tuple[Mapping[str, object], ...]]:
    """The layers and history of an image base, its blobs copied as they are into ``directory``.

    A registry base is fetched again by the digest of the image the build used, so its
    compressed blobs are the registry's; an archive's are the archive's own.

    Returns:
        Nothing for a base that is not an image (rootfs, bootstrap, ACI, scratch).

    Raises:
        BuildError: the copy failed, or the base's layers and its config's diff_ids disagree.
    """
    base = stage.base
    argv: list[str | os.PathLike[str]] = [
        run.find_tool("skopeo", "keep the base image's layers"), "copy", "--quiet", "--preserve-digests",
        "--dest-oci-accept-uncompressed-layers",
    ]  # fmt: skip
    match base:
        case ArchiveBase():
            assert base_file is not None
            source = f"{base.kind}:{base_file}"
        case RegistryBase():
            assert image_id is not None
            source = f"docker://{_pinned(buildah, base.reference, image_id)}"
            if not (tls_verify and stage.tls_verify):
                argv.append("--src-tls-verify=false")
            if authfile is not None:
                argv += ["--src-authfile", os.fspath(authfile)]
        case _:
            return (), ()
    try:
        run.run([*argv, source, f"oci:{directory}:base"], env=buildah.environment())
    except CommandError as error:
        raise BuildError(
            f"cannot keep the layers of base {base.describe()}: skopeo copy failed\n{error.output_tail}",
            hint='[output] layers = "squash" makes one layer of the whole tree instead',
        ) from None
    return _read_layout(directory, base.describe())


def _pinned(buildah: Buildah, reference: str, image_id: str) -> str:
    """The reference by the digest of the manifest the image was pulled by, when buildah knows it."""
    digest = buildah.image_digest(image_id)
    if digest is None:
        return reference
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return f"{name}@{digest}"


def _read_layout(
    directory: Path, what: str
) -> tuple[tuple[KeptLayer, ...], tuple[Mapping[str, object], ...]]:
    blobs = directory / "blobs" / "sha256"
    index = _json(directory / "index.json", what)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
        raise BuildError(f"base {what}: the copy of its image is not one image")
    manifest = _json(blobs / _hex(manifests[0].get("digest"), what), what)
    config_descriptor = manifest.get("config") if isinstance(manifest, dict) else None
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(config_descriptor, dict) or not isinstance(layers, list):
        raise BuildError(f"base {what}: its manifest names no config or layers")
    config = _json(blobs / _hex(config_descriptor.get("digest"), what), what)
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise BuildError(f"base {what}: its config's diff_ids do not match its {len(layers)} layers")
    kept = []
    for descriptor, diff_id in zip(layers, diff_ids, strict=True):
        digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
        blob = blobs / _hex(digest, what)
        with blob.open("rb") as file:
            magic = file.read(4)
        media = next(
            (kind for prefix, kind in _COMPRESSED_MEDIA.items() if magic.startswith(prefix)), MEDIA_LAYER
        )
        kept.append(
            KeptLayer(
                blob=blob,
                digest=str(digest),
                size=blob.stat().st_size,
                diff_id=str(diff_id),
                media_type=media,
            )
        )
    history = config.get("history") if isinstance(config, dict) else None
    entries = tuple(item for item in history if isinstance(item, dict)) if isinstance(history, list) else ()
    return tuple(kept), entries


def _hex(digest: object, what: str) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:") or "/" in digest:
        raise BuildError(f"base {what}: unexpected blob digest {digest!r} in the copy of its image")
    return digest.removeprefix("sha256:")


def _json(path: Path, what: str) -> object:
    try:
        with path.open("rb") as file:
            return json.loads(file.read(_MAX_JSON))
    except (OSError, ValueError) as error:
        raise BuildError(f"base {what}: cannot read {path.name} of the copy of its image: {error}") from None
