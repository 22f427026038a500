"""Stages of file steps only, built in memory: the base is never extracted.

When no stage has a ``run`` step or a copy from another stage, and every chain starts from a
rootfs or bootstrap tarball, a docker-archive or oci-archive, or scratch, nothing needs a
container: the base's tarballs are indexed (dualbuild.builder.basetree), the file steps are done
on the tree in memory by the same code that does them on a mounted root
(dualbuild.builder.filesteps over dualbuild.builder.heldroot), a copy from the context as
``buildah copy`` does it (dualbuild.builder.heldcopy), and the emitters read each file's bytes
where it lies: in the base's archive, or in the context. An image base's own layers are kept
byte for byte as in the extracting build; only the layers of the build are written. The
artifacts are the bytes the extracting build writes (a test builds both ways), and so is the
build key: the step cache is neither read nor filled, since doing the steps again costs less
than looking them up.

Any other stage, ``--extract-base``, an ACI dependency chain, or a base whose tarball has a shape
that is not certain (NotHeld) is built with buildah as before.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.builder.basetree import NotHeld, archive_image, rootfs_tree
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.filesteps import container_path
from dualbuild.builder.heldcopy import copy_into
from dualbuild.builder.heldroot import HeldRoot
from dualbuild.builder.keys import KeyedPlan, KeyedStage, key_plan
from dualbuild.builder.layering import LayerTrees, base_layers, history_line
from dualbuild.builder.stages import (
    BuildOptions,
    BuildSession,
    BuiltImage,
    StepTiming,
    build_session,
    layering_of,
)
from dualbuild.builder.step import file_step
from dualbuild.errors import BuildError
from dualbuild.files import scratch_directory
from dualbuild.imageconfig import ImageConfig, apply_app, from_docker_config
from dualbuild.layer.archivefiles import ArchiveFiles
from dualbuild.layer.layers import ImageLayers, KeptLayer, MadeLayer
from dualbuild.layer.memtree import MemoryTree
from dualbuild.leftovers import STORE_DIR
from dualbuild.log import log, output_line, status
from dualbuild.plan import BuildPlan, PlannedStage
from dualbuild.recipe.model import (
    ArchiveBase,
    BootstrapBase,
    CopyStep,
    MkdirStep,
    RemoveStep,
    RootfsBase,
    ScratchBase,
    StageBase,
    SymlinkStep,
    WriteStep,
)

_FILE_STEPS = (WriteStep, MkdirStep, SymlinkStep, RemoveStep)
_HELD_BASES = (ScratchBase, RootfsBase, BootstrapBase, ArchiveBase, StageBase)


def why_extracted(plan: BuildPlan, options: BuildOptions) -> str | None:
    """Why the build needs containers (the first reason found); None when it is built in memory."""
    if options.extract_base:
        return "--extract-base"
    if plan.recipe.output.chained_aci:
        return "the ACI dependency chain is written from mounted trees"
    for stage in plan.stages:
        if not isinstance(stage.base, _HELD_BASES):
            return f"stage {stage.name} starts from {stage.base.describe()}"
        for step in stage.steps:
            from_context = isinstance(step.step, CopyStep) and step.step.from_stage is None
            if not isinstance(step.step, _FILE_STEPS) and not from_context:
                return f"stage {stage.name} step {step.number} is {step.summary}"
    return None


@contextmanager
def session(plan: BuildPlan, options: BuildOptions) -> Iterator[BuildSession | HeldSession]:
    """The build's session: in memory when nothing needs a container, else buildah's."""
    reason = why_extracted(plan, options)
    if reason is not None:
        log.debug("the stages run in buildah containers: %s", reason)
        with build_session(plan, options) as extracting:
            yield extracting
        return
    with ExitStack() as stack:
        scratch = stack.enter_context(scratch_directory("layers", STORE_DIR))
        # Only for skopeo's TMPDIR and a registry base's pull, which a held build never has.
        buildah = Buildah(
            storage=options.storage, cache_dir=plan.settings.cache_dir, authfile=options.authfile
        )
        stack.callback(buildah.cleanup)
        files = ArchiveFiles()
        stack.callback(files.close)
        keyed = key_plan(
            plan, buildah, tls_verify=options.tls_verify, keyring=options.keyring,
            on_output=options.on_output or output_line,
        )  # fmt: skip
        yield HeldSession(
            plan=plan,
            options=options,
            keyed=keyed,
            buildah=buildah,
            scratch=scratch,
            files=files,
            stack=stack,
        )


@dataclass
class _HeldStage:
    tree: MemoryTree
    inherited: ImageConfig
    # The tree at each position a layer ends at (0: the base).
    positions: dict[int, MemoryTree] = field(default_factory=dict)
    # An image base's own layers and history.
    kept: tuple[KeptLayer, ...] = ()
    history: tuple[Mapping[str, object], ...] = ()


@dataclass
class HeldSession:
    """A build whose stages are done on trees held in memory."""

    plan: BuildPlan
    options: BuildOptions
    keyed: KeyedPlan
    buildah: Buildah
    scratch: Path
    files: ArchiveFiles
    stack: ExitStack

    def build(self) -> BuiltImage:
        """Build every stage in memory, or with buildah when a base's tarball cannot be held.

        Raises:
            BuildError: a base is unreadable or unsafe, or a step cannot be done.
        """
        trees = LayerTrees(self.plan, layering_of(self.plan))
        timings: list[StepTiming] = []
        built: dict[str, _HeldStage] = {}
        try:
            for keyed in self.keyed.stages:
                built[keyed.stage.name] = self._stage(keyed, built, trees, timings)
        except NotHeld as why:
            log.info("%s: extracting it", why.reason)
            self.files.close()
            extracting = self.stack.enter_context(build_session(self.plan, self.options))
            return extracting.build()
        final = built[self.plan.final_stage.name]
        recipe = self.plan.recipe
        source_date_epoch = self.plan.settings.source_date_epoch
        return BuiltImage(
            rootfs=None,
            tree=final.tree.tree(source_date_epoch),
            config=apply_app(final.inherited, recipe.app, recipe.image.labels),
            key=self.keyed.final_key,
            step_timings=tuple(timings),
            layers=self._layers(trees, built, source_date_epoch) if trees.layered else None,
        )

    def _stage(
        self, keyed: KeyedStage, built: dict[str, _HeldStage], trees: LayerTrees, timings: list[StepTiming]
    ) -> _HeldStage:
        stage = keyed.stage
        label = f"[{stage.number}/{len(self.plan.stages)} {stage.name}]"
        log.info("%s from %s (held in memory: no step needs a container)", label, stage.base.describe())
        held = self._base(keyed, stage, built, trees)
        if trees.needed(stage.name, 0):
            held.positions[0] = held.tree.snapshot()
        root = HeldRoot(held.tree)
        for step in stage.steps:
            header = f"{label} step {step.number}/{len(stage.steps)} {step.summary}"
            log.info("%s  [in memory]", header)
            began = time.monotonic()
            try:
                if isinstance(step.step, CopyStep):
                    _copy(held.tree, keyed, step.number, step.step, step.workdir)
                else:
                    file_step(root, step)
            except BuildError as error:
                raise BuildError(
                    f"{label} step {step.number}/{len(stage.steps)}: {error.message}", hint=error.hint
                ) from None
            if trees.needed(stage.name, step.number):
                held.positions[step.number] = held.tree.snapshot()
            timings.append(
                StepTiming(
                    stage=stage.name,
                    step=step.number,
                    summary=step.summary,
                    seconds=time.monotonic() - began,
                    cached=False,
                )
            )
        return held

    def _base(
        self, keyed: KeyedStage, stage: PlannedStage, built: dict[str, _HeldStage], trees: LayerTrees
    ) -> _HeldStage:
        base = stage.base
        with status.show(f"reading {base.describe()}"):
            match base:
                case ScratchBase():
                    return _HeldStage(tree=MemoryTree(self.files), inherited=ImageConfig())
                case RootfsBase() | BootstrapBase():
                    assert keyed.base_file is not None
                    what = "rootfs tarball" if isinstance(base, RootfsBase) else "bootstrap tarball"
                    tree = rootfs_tree(keyed.base_file, self.scratch, self.files, what)
                    return _HeldStage(tree=tree, inherited=ImageConfig())
                case ArchiveBase():
                    return self._image_base(keyed, stage, trees.layered and stage is trees.chain[0])
                case StageBase():
                    earlier = built[base.stage]
                    return _HeldStage(tree=earlier.tree.snapshot(), inherited=earlier.inherited)
        raise AssertionError(f"not a held base: {base!r}")

    def _image_base(self, keyed: KeyedStage, stage: PlannedStage, layered: bool) -> _HeldStage:
        """An archive's tree, read where its layers lie; its layers copied as they are if kept."""
        assert keyed.base_file is not None
        assert isinstance(stage.base, ArchiveBase)
        tree, config = archive_image(keyed.base_file, str(stage.base.kind), self.scratch, self.files)
        inner = config.get("config")
        held = _HeldStage(tree=tree, inherited=from_docker_config(inner if isinstance(inner, dict) else {}))
        if layered:
            try:
                held.kept, held.history = base_layers(
                    stage, base_file=keyed.base_file, image_id=None, buildah=self.buildah,
                    directory=self.scratch / "base", tls_verify=self.options.tls_verify,
                    authfile=self.options.authfile,
                )  # fmt: skip
            except BuildError as error:
                # Extracting it says why as a layered build always has.
                raise NotHeld(
                    f"its layers cannot be kept as they are ({error.message.splitlines()[0]})"
                ) from None
        return held

    def _layers(self, trees: LayerTrees, built: dict[str, _HeldStage], source_date_epoch: int) -> ImageLayers:
        """The image's layers as layering.LayerTrees.image_layers makes them of mounted trees."""
        bottom = built[trees.chain[0].name]
        kept = bottom.kept
        made: list[MadeLayer] = []
        for stage in trees.chain:
            positions = sorted(built[stage.name].positions.items())
            if stage is trees.chain[0] and not kept:
                line = history_line(trees.layering, stage, 0)
                base = positions[0][1].tree(source_date_epoch)
                made.append(MadeLayer(lower=None, upper=None, created_by=line, entries=base))
            for (_, lower), (number, upper) in itertools.pairwise(positions):
                line = history_line(trees.layering, stage, number)
                entries = upper.changes(lower, source_date_epoch)
                made.append(MadeLayer(lower=None, upper=None, created_by=line, entries=entries))
        return ImageLayers(kept=kept, history=bottom.history, made=tuple(made))


def _copy(tree: MemoryTree, keyed: KeyedStage, number: int, step: CopyStep, workdir: str | None) -> None:
    """A copy from the context, with the destination the extracting build hands buildah."""
    dest = container_path(step.to, workdir) + ("/" if step.to.endswith("/") else "")
    copy_into(
        tree, keyed.sources[number], dest, owner=step.owner, mode=step.mode, clock=lambda: int(time.time())
    )
