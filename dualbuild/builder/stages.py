"""Running a plan's stages with buildah and handing over the final tree.

A :func:`build_session` owns one buildah session: on entering it every stage is keyed
(builder/keys.py: bases pulled, found or bootstrapped once), which is all an up-to-date check
needs; :meth:`BuildSession.build` then builds every stage and returns the final stage's mounted
tree and its config. On leaving the session (success, failure or interrupt) every container is
gone.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import run
from dualbuild.builder import bases
from dualbuild.builder.buildah import TREE_LABEL, Buildah
from dualbuild.builder.cache import (
    Position,
    StepIndex,
    cache_image,
    cached_keys,
    tree_digest,
)
from dualbuild.builder.keys import KeyedPlan, KeyedStage, key_plan
from dualbuild.builder.layering import LayerTrees, image_layers
from dualbuild.builder.runstep import RunMounts
from dualbuild.builder.secrets import SecretFiles
from dualbuild.builder.step import run_step
from dualbuild.builder.storage import StorageOptions
from dualbuild.errors import BuildError, CommandError
from dualbuild.files import scratch_directory, write_atomically
from dualbuild.imageconfig import ImageConfig, apply_app, from_docker_config
from dualbuild.layer.layers import ImageLayers
from dualbuild.layer.tree import Tree
from dualbuild.leftovers import STORE_DIR
from dualbuild.log import log, output_line, status
from dualbuild.plan import BuildPlan, PlannedStage
from dualbuild.recipe.model import (
    AciBase,
    ArchiveBase,
    BootstrapBase,
    CopyStep,
    Layering,
    RegistryBase,
    RootfsBase,
    RunStep,
    ScratchBase,
    StageBase,
)


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to run the build (what to build is the plan; where and how it is isolated, its settings)."""

    tls_verify: bool = True
    authfile: Path | None = None
    keyring: Path | None = None
    storage: StorageOptions = field(default_factory=StorageOptions)
    # Whether steps are looked up in the step cache (--no-cache: not) ...
    cache: bool = True
    # ... and whether the trees they make are kept there (--no-cache: yes, so that the next
    # build finds the fresh results, not older ones).
    keep: bool = True
    on_output: Callable[[str], None] | None = None
    # Stages of file steps only are built in memory (builder/held.py) unless this is set.
    extract_base: bool = False


@dataclass(frozen=True, kw_only=True)
class StepTiming:
    """How long one step took (0 when it came from the step cache)."""

    stage: str
    step: int
    summary: str
    seconds: float
    cached: bool


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """The final stage's tree, the image config ([app] applied), and each step's time.

    ``rootfs`` is the tree mounted, or ``tree`` the tree held in memory (builder/held.py).
    ``layers`` are the image's layers; None for one squashed layer.
    """

    rootfs: Path | None
    config: ImageConfig
    key: str
    step_timings: tuple[StepTiming, ...] = ()
    layers: ImageLayers | None = None
    tree: Tree | None = None


# Bases whose first container holds their whole tree as its own change (extracted into it).
_TREE_BASES = (RootfsBase, BootstrapBase, AciBase)


@dataclass
class _Stage:
    container: str
    root: Path
    inherited: ImageConfig
    key: str
    # Whether the step cache holds the final tree (as cache_image(key)).
    cached: bool = False


@dataclass
class BuildSession:
    """One build's buildah session: the keyed plan, and the build of it."""

    plan: BuildPlan
    options: BuildOptions
    buildah: Buildah
    index: StepIndex
    keyed: KeyedPlan
    mounts: RunMounts
    trees: LayerTrees
    # Where the base image's own layers are copied for a layered image.
    scratch: Path

    def build(self) -> BuiltImage:
        """Build every stage; the final tree stays mounted until the session ends.

        With the cache on, the tree after every step is kept as a buildah image named by the
        step's key, and each stage starts from the last position whose key it already has.

        Raises:
            BuildError: a base is missing or a step failed (naming stage, step and command).
            ToolNotFoundError: a tool a base needs is missing.
        """
        on_output = self.options.on_output or output_line
        built: dict[str, _Stage] = {}
        timings: list[StepTiming] = []
        try:
            for keyed in self.keyed.stages:
                builder = _StageBuilder(
                    self.buildah, self.plan, keyed, built, self.options, self.index, self.mounts, on_output,
                    timings, self.trees,
                )  # fmt: skip
                built[keyed.stage.name] = builder.build()
        finally:
            # What the stages built so far keyed explains the next build's misses, failed or not.
            if self.options.keep:
                with run.deferred_interrupts():
                    self.index.save()
        final = built[self.plan.final_stage.name]
        recipe = self.plan.recipe
        return BuiltImage(
            rootfs=final.root,
            config=apply_app(final.inherited, recipe.app, recipe.image.labels),
            key=final.key,
            step_timings=tuple(timings),
            layers=self._layers() if self.trees.layered else None,
        )

    def _layers(self) -> ImageLayers:
        with status.show("finding the layers"):
            return image_layers(
                self.trees, self.keyed, self.buildah, directory=self.scratch,
                tls_verify=self.options.tls_verify, authfile=self.options.authfile,
            )  # fmt: skip


@contextmanager
def build_session(plan: BuildPlan, options: BuildOptions) -> Iterator[BuildSession]:
    """Key the plan's stages; yield the session that builds them; then remove every container.

    Raises:
        BuildError: a base or copy source is missing.
        ToolNotFoundError: buildah (or a tool a base needs) is missing.
    """
    settings = plan.settings
    buildah = Buildah(
        storage=options.storage, isolation=settings.isolation, cache_dir=settings.cache_dir,
        authfile=options.authfile,
    )  # fmt: skip
    secret_files = SecretFiles(sources=settings.secrets, context=settings.context)
    with scratch_directory("layers", STORE_DIR) as scratch, _cleaned(buildah, secret_files):
        buildah.reclaim_dead_sessions()
        keyed = key_plan(
            plan, buildah, tls_verify=options.tls_verify, keyring=options.keyring,
            on_output=options.on_output or output_line,
        )  # fmt: skip
        index = StepIndex(settings.cache_dir, plan.recipe.path)
        mounts = RunMounts(
            secret_files=secret_files, cache_dir=settings.cache_dir, arch=str(plan.recipe.image.arch)
        )
        yield BuildSession(
            plan=plan, options=options, buildah=buildah, index=index, keyed=keyed, mounts=mounts,
            trees=LayerTrees(plan, layering_of(plan)), scratch=scratch,
        )  # fmt: skip


def layering_of(plan: BuildPlan) -> Layering:
    """The recipe's layering, when an output has layers (an ACI alone holds the tree)."""
    if plan.artifacts.docker is None and plan.artifacts.oci is None and not plan.recipe.output.chained_aci:
        return Layering.SQUASH
    return plan.recipe.output.layers


@contextmanager
def _cleaned(buildah: Buildah, secret_files: SecretFiles) -> Iterator[None]:
    """Every container of the session gone and the secrets' files closed, whatever happens."""
    try:
        yield
    finally:
        with run.deferred_interrupts():
            try:
                buildah.cleanup()
            finally:
                secret_files.close()


def _stage_label(plan: BuildPlan, stage: PlannedStage) -> str:
    return f"[{stage.number}/{len(plan.stages)} {stage.name}]"


@dataclass
class _StageBuilder:
    """Builds one keyed stage: starts from its last cached position, runs the rest."""

    buildah: Buildah
    plan: BuildPlan
    keyed: KeyedStage
    built: dict[str, _Stage]
    options: BuildOptions
    index: StepIndex
    mounts: RunMounts
    on_output: Callable[[str], None]
    timings: list[StepTiming]
    trees: LayerTrees

    @property
    def stage(self) -> PlannedStage:
        return self.keyed.stage

    def build(self) -> _Stage:
        label = _stage_label(self.plan, self.stage)
        log.info("%s from %s", label, self.stage.base.describe())
        positions = self.keyed.positions
        hit = self._last_cached(positions)
        container = self._from_cache(positions[hit].key) if hit is not None else None
        root = self._intact(positions[hit].key, container) if hit is not None and container else None
        if hit is not None and container is not None and root is not None:
            inherited = self._inherited_on_hit(positions[0].key)
            for number in range(hit + 1):
                self.trees.record_image(self.stage.name, number, cache_image(positions[number].key))
        else:
            hit = None
            container, inherited = self._start()
            root = self.buildah.mount(container)
            self._remember_inherited(positions[0].key, container)
            kept = self._keep(container, root, positions, 0)
            if kept is not None and len(positions) > 1 and isinstance(self.stage.base, _TREE_BASES):
                container, root = self._continue_from(kept, container)
        last = len(positions) - 1
        state = _Stage(
            container=container,
            root=root,
            inherited=inherited,
            key=self.keyed.key,
            cached=(self.options.cache and hit == last) or (self.options.keep and self._kept(last)),
        )
        steps = self.stage.steps
        for step in steps:
            header = f"{label} step {step.number}/{len(steps)} {step.summary}"
            if hit is not None and step.number <= hit:
                log.info("%s  [cached]", header)
                self.timings.append(
                    StepTiming(
                        stage=self.stage.name,
                        step=step.number,
                        summary=step.summary,
                        seconds=0.0,
                        cached=True,
                    )
                )
                continue
            reason = self._miss_reason(positions, step.number)
            log.info("%s  [run: %s]", header, reason)
            began = time.monotonic()
            try:
                with status.show(header):
                    run_step(
                        self.buildah, self.keyed, self.plan.settings.context, state.container, state.root,
                        step, {name: stage.container for name, stage in self.built.items()}, self.mounts,
                        self.on_output,
                    )  # fmt: skip
            except CommandError as error:
                raise BuildError(
                    f"{label} step {step.number}/{len(steps)} ({step.summary}) failed with exit code "
                    f"{error.returncode}\ncommand: {shlex.join(error.argv)}\nlast lines of its output:\n"
                    f"{error.output_tail}",
                ) from None
            except BuildError as error:
                raise BuildError(
                    f"{label} step {step.number}/{len(steps)}: {error.message}", hint=error.hint
                ) from None
            kept = self._keep(container, root, positions, step.number)
            if kept is not None and step.number < last and isinstance(step.step, (RunStep, CopyStep)):
                container, root = self._continue_from(kept, container)
                state.container, state.root = container, root
            seconds = time.monotonic() - began
            log.debug("%s took %.2fs", header, seconds)
            self.timings.append(
                StepTiming(
                    stage=self.stage.name,
                    step=step.number,
                    summary=step.summary,
                    seconds=seconds,
                    cached=False,
                )
            )
        for number, position in enumerate(positions):
            self.index.record(self.stage.name, number, position)
        # The stage's last tree stays mounted: its own mount, not a copy, is the layers' tree.
        self.trees.record_root(self.stage.name, last, root)
        return state

    def _from_cache(self, key: str) -> str | None:
        """A container of the cached tree ``key``; None if it went meanwhile (a prune, another build)."""
        try:
            return self.buildah.new_container(cache_image(key), label=self.stage.name)
        except CommandError as error:
            if "image not known" not in error.output_tail and "unknown image" not in error.output_tail:
                raise
            log.warning(
                "the cached tree %s was removed meanwhile (cache prune?); the stage runs again", key[:12]
            )
            return None

    def _intact(self, key: str, container: str) -> Path | None:
        """The mounted root of a cached tree that still holds what was committed; else None.

        A tree damaged in buildah's store (or one with no digest recorded) is not trusted: its
        container and image are removed and the stage runs again.
        """
        root = self.buildah.mount(container)
        # The container's, not the image name's: another build may commit the name meanwhile.
        recorded = self.buildah.label(TREE_LABEL, container=container)
        if recorded is not None and tree_digest(root) == recorded:
            return root
        log.warning(
            "the cached tree %s %s; the stage runs again",
            key[:12],
            "differs from what was committed"
            if recorded
            else "has no digest recorded (an older dualbuild made it)",
        )
        self.buildah.remove_container(container)
        self.buildah.remove_image(cache_image(key))
        return None

    def _last_cached(self, positions: tuple[Position, ...]) -> int | None:
        if not self.options.cache:
            return None
        if not self._inherited_known(positions[0].key):
            return None
        first = 0 if self._kept(0) else 1
        # One listing of the cache, not one `buildah inspect` per position (10,000 steps: minutes).
        kept = cached_keys(self.buildah)
        for number in range(len(positions) - 1, first - 1, -1):
            if positions[number].key in kept:
                return number
        return None

    def _miss_reason(self, positions: tuple[Position, ...], number: int) -> str:
        if not self.options.cache:
            return "--no-cache"
        return self.index.reason(self.stage.name, number, positions[number])

    def _kept(self, number: int) -> bool:
        """Whether the tree at this position goes into the step cache (when the cache is on)."""
        # A rootfs or bootstrap base is extracted again faster than its tree is committed
        # (BENCHMARKS.md, finding 6): its position 0 is not kept, unless it is a layer's tree.
        return (
            number > 0
            or not isinstance(self.stage.base, (RootfsBase, BootstrapBase))
            or self.trees.needed(self.stage.name, 0)
        )

    def _keep(self, container: str, root: Path, positions: tuple[Position, ...], number: int) -> str | None:
        """Commit the tree at this position if the cache keeps it or a layer ends there; the image."""
        if self.options.keep and self._kept(number):
            image = cache_image(positions[number].key)
            self.buildah.commit_as(container, image, tree_digest=tree_digest(root))
            self.trees.record_image(self.stage.name, number, image)
            return image
        if (
            self.trees.needed(self.stage.name, number)
            and not self.trees.recorded(self.stage.name, number)
            and number < len(positions) - 1
        ):
            # Not cached (--no-cache without keeping), yet a layer ends here: a commit of the session.
            image = self.buildah.commit(container, label=f"{self.stage.name}-{number}")
            self.trees.record_image(self.stage.name, number, image)
            return image
        return None

    def _continue_from(self, image: str, container: str) -> tuple[str, Path]:
        """Go on in a container of the image just committed, so the next commit holds only what follows.

        A commit stores what its container changed since it was made: in one container for the
        whole stage, every step's entry would hold the steps before it again (a 122 MB image
        left 1.3 GB of cache). Run and copy steps, the ones that add much, start a new one.
        """
        fresh = self.buildah.new_container(image, label=self.stage.name)
        root = self.buildah.mount(fresh)
        self.buildah.remove_container(container)
        return fresh, root

    def _start(self) -> tuple[str, ImageConfig]:
        base, label = self.stage.base, self.stage.name
        match base:
            case ScratchBase():
                return self.buildah.new_container("scratch", label=label), ImageConfig()
            case RegistryBase():
                assert self.keyed.image_id is not None
                container = self.buildah.new_container(self.keyed.image_id, label=label)
                return container, bases.image_config_of(self.buildah, container)
            case ArchiveBase():
                assert self.keyed.base_file is not None
                image_id = self.buildah.pull(f"{base.kind}:{self.keyed.base_file}")
                container = self.buildah.new_container(image_id, label=label)
                return container, bases.image_config_of(self.buildah, container)
            case RootfsBase() | BootstrapBase():
                assert self.keyed.base_file is not None
                return bases.prepare_rootfs(self.buildah, self.keyed.base_file, label), ImageConfig()
            case AciBase():
                assert self.keyed.base_file is not None
                return bases.prepare_aci(self.buildah, self.keyed.base_file, label)
            case StageBase():
                earlier = self.built[base.stage]
                if earlier.cached:
                    image = cache_image(earlier.key)
                else:
                    image = self.buildah.commit(earlier.container, label=base.stage)
                self.trees.record_image(label, 0, image)
                return self.buildah.new_container(image, label=label), earlier.inherited

    # The config a base brings is not in the cached trees (buildah commit adds its own label),
    # so for image bases it is kept beside them, keyed by the base key.
    def _config_file(self, key: str) -> Path:
        return self.plan.settings.cache_dir / "configs" / f"{key}.json"

    def _remember_inherited(self, key: str, container: str) -> None:
        if self.options.keep and isinstance(self.stage.base, (RegistryBase, ArchiveBase)):
            path = self._config_file(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            config = bases.raw_image_config(self.buildah, container)
            write_atomically(path, json.dumps(config, sort_keys=True).encode())

    def _inherited_known(self, key: str) -> bool:
        return not isinstance(self.stage.base, (RegistryBase, ArchiveBase)) or self._config_file(key).exists()

    def _inherited_on_hit(self, key: str) -> ImageConfig:
        match self.stage.base:
            case RegistryBase() | ArchiveBase():
                return from_docker_config(json.loads(self._config_file(key).read_text()))
            case AciBase():
                assert self.keyed.base_file is not None
                return bases.aci_base_config(self.keyed.base_file)
            case StageBase(stage=name):
                return self.built[name].inherited
            case _:
                return ImageConfig()
