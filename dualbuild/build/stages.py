"""Running a BuildPlan's stages with buildah and handing over the final tree.

``build_stages`` is a context manager: inside it the final stage's root filesystem is mounted
and its config known; on leaving it (success, failure or interrupt) every container is gone.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import run
from dualbuild.build import bases, filesteps
from dualbuild.build.buildah import Buildah, StorageOptions
from dualbuild.build.cache import (
    CopyInput,
    Position,
    StepIndex,
    base_key,
    cache_image,
    copy_inputs,
    definition,
    file_sha256,
    step_key,
)
from dualbuild.errors import BuildError, CommandError
from dualbuild.imageconfig import ImageConfig, apply_app, from_docker_config
from dualbuild.log import log, output_line, status
from dualbuild.plan import BuildPlan, PlannedStage, PlannedStep
from dualbuild.recipe.model import (
    AciBase,
    ArchiveBase,
    BootstrapBase,
    CopyStep,
    MkdirStep,
    RegistryBase,
    RemoveStep,
    RootfsBase,
    RunStep,
    ScratchBase,
    StageBase,
    SymlinkStep,
    WriteStep,
)

# What `buildah run` leaves in a tree (mount points, files it bind-mounts over); removed again
# after a step when the step did not create them itself and they are still empty.
_RUN_LEFTOVERS = ("etc/hostname", "etc/hosts", "etc/resolv.conf", "dev", "proc", "sys", "run")


def default_cache_dir() -> Path:
    """Where dualbuild keeps bootstrap bases and probe results (XDG_CACHE_HOME honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "dualbuild"


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to run the build (not what to build: that is the plan)."""

    isolation: str | None = None
    tls_verify: bool = True
    authfile: Path | None = None
    keyring: Path | None = None
    storage: StorageOptions = field(default_factory=StorageOptions)
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache: bool = True
    on_output: Callable[[str], None] | None = None


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """The final stage's mounted tree and the image config ([app] applied)."""

    rootfs: Path
    config: ImageConfig
    key: str


@dataclass
class _Stage:
    container: str
    root: Path
    inherited: ImageConfig
    key: str
    # Whether the step cache holds the final tree (as cache_image(key)).
    cached: bool = False


@contextmanager
def build_stages(plan: BuildPlan, options: BuildOptions) -> Iterator[BuiltImage]:
    """Build every stage; yield the final tree while it is mounted; then remove everything.

    With the cache on, the tree after every step is kept as a buildah image named by the
    step's key, and a build starts each stage from the last position whose key it already has.

    Raises:
        BuildError: a base is missing or a step failed (naming stage, step and command).
        ToolNotFoundError: buildah (or a tool a base needs) is missing.
    """
    buildah = Buildah(
        storage=options.storage, isolation=options.isolation, cache_dir=options.cache_dir,
        authfile=options.authfile,
    )  # fmt: skip
    index = StepIndex(options.cache_dir, plan.recipe.path)
    on_output = options.on_output or output_line
    try:
        built: dict[str, _Stage] = {}
        for stage in plan.stages:
            builder = _StageBuilder(buildah, plan, stage, built, options, index, on_output)
            built[stage.name] = builder.build()
        final = built[plan.final_stage.name]
        recipe = plan.recipe
        yield BuiltImage(
            rootfs=final.root,
            config=apply_app(final.inherited, recipe.app, recipe.image.labels),
            key=final.key,
        )
    finally:
        with run.deferred_interrupts():
            buildah.cleanup()
            if options.cache:
                index.save()


def final_key(plan: BuildPlan, options: BuildOptions) -> str:
    """The cache key of the final tree, computed without building (registry bases are pulled).

    Raises:
        BuildError: a base or copy source is missing.
    """
    buildah = Buildah(
        storage=options.storage, isolation=options.isolation, cache_dir=options.cache_dir,
        authfile=options.authfile,
    )  # fmt: skip
    index = StepIndex(options.cache_dir, plan.recipe.path)
    keyed: dict[str, _Stage] = {}
    for stage in plan.stages:
        builder = _StageBuilder(buildah, plan, stage, keyed, options, index, options.on_output or output_line)
        key = builder.positions()[-1].key
        keyed[stage.name] = _Stage(container="", root=Path(), inherited=ImageConfig(), key=key)
    return keyed[plan.final_stage.name].key


def _stage_label(plan: BuildPlan, stage: PlannedStage) -> str:
    return f"[{stage.number}/{len(plan.stages)} {stage.name}]"


@dataclass
class _StageBuilder:
    """Builds one stage: keys every position, starts from the last cached one, runs the rest."""

    buildah: Buildah
    plan: BuildPlan
    stage: PlannedStage
    built: dict[str, _Stage]
    options: BuildOptions
    index: StepIndex
    on_output: Callable[[str], None]
    image_id: str | None = None
    base_file: Path | None = None

    def build(self) -> _Stage:
        label = _stage_label(self.plan, self.stage)
        log.info("%s from %s", label, self.stage.base.describe())
        positions = self.positions()
        hit = self._last_cached(positions)
        if hit is not None:
            container = self.buildah.new_container(cache_image(positions[hit].key), label=self.stage.name)
            inherited = self._inherited_on_hit(positions[0].key)
        else:
            container, inherited = self._start()
            self._remember_inherited(positions[0].key, container)
            self._keep(container, positions, 0)
        last = len(positions) - 1
        state = _Stage(
            container=container,
            root=self.buildah.mount(container),
            inherited=inherited,
            key=positions[-1].key,
            cached=self.options.cache and (hit == last or self._kept(last)),
        )
        steps = self.stage.steps
        for step in steps:
            header = f"{label} step {step.number}/{len(steps)} {step.summary}"
            if hit is not None and step.number <= hit:
                log.info("%s  [cached]", header)
                continue
            reason = self._miss_reason(positions, step.number)
            log.info("%s  [run: %s]", header, reason)
            try:
                with status.show(header):
                    _run_step(self.buildah, self.plan, state, step, self.built, self.on_output)
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
            self._keep(container, positions, step.number)
        for number, position in enumerate(positions):
            self.index.record(self.stage.name, number, position)
        return state

    def positions(self) -> list[Position]:
        """The key of the base (position 0) and of the tree after every step."""
        key = self._base_key()
        positions = [Position(key=key, parent="", definition="", inputs={})]
        for step in self.stage.steps:
            inputs: list[CopyInput] = []
            source = None
            if isinstance(step.step, CopyStep):
                if step.step.from_stage is not None:
                    source = self.built[step.step.from_stage].key
                else:
                    inputs = copy_inputs(
                        self.plan.context, _context_sources(self.plan.context, step.step.sources)
                    )
            step_definition = definition(step)
            key = step_key(positions[-1].key, step_definition, inputs, source)
            positions.append(
                Position(
                    key=key,
                    parent=positions[-1].key,
                    definition=step_definition,
                    inputs={i.path: f"{i.kind}:{i.mode:o}:{i.content}" for i in inputs},
                )
            )
        return positions

    def _base_key(self) -> str:
        base, context = self.stage.base, self.plan.context
        match base:
            case ScratchBase():
                return base_key("scratch", "")
            case RegistryBase():
                tls_verify = self.stage.tls_verify and self.options.tls_verify
                self.image_id = self.buildah.pull(base.reference, tls_verify=tls_verify)
                return base_key("image", self.image_id)
            case ArchiveBase():
                self.base_file = bases.context_file(context, base.path, str(base.kind))
                return base_key(str(base.kind), file_sha256(self.base_file))
            case RootfsBase():
                self.base_file = bases.rootfs_tarball(base, context)
                return base_key("rootfs", file_sha256(self.base_file))
            case BootstrapBase():
                arch = self.plan.recipe.image.arch
                self.base_file = bases.bootstrap_tarball(base, arch, self.options.cache_dir, self.on_output)
                return base_key("bootstrap", self.base_file.name)
            case AciBase():
                self.base_file = bases.aci_file(base, context, self.options.keyring)
                return base_key("aci", file_sha256(self.base_file))
            case StageBase():
                return base_key("stage", self.built[base.stage].key)

    def _last_cached(self, positions: list[Position]) -> int | None:
        if not self.options.cache:
            return None
        if not self._inherited_known(positions[0].key):
            return None
        first = 0 if self._kept(0) else 1
        for number in range(len(positions) - 1, first - 1, -1):
            if self.buildah.image_exists(cache_image(positions[number].key)):
                return number
        return None

    def _miss_reason(self, positions: list[Position], number: int) -> str:
        if not self.options.cache:
            return "--no-cache"
        return self.index.reason(self.stage.name, number, positions[number])

    def _kept(self, number: int) -> bool:
        """Whether the tree at this position goes into the step cache (when the cache is on)."""
        # A rootfs or bootstrap base is extracted again faster than its tree is committed
        # (BENCHMARKS.md, finding 6): its position 0 is not kept.
        return number > 0 or not isinstance(self.stage.base, (RootfsBase, BootstrapBase))

    def _keep(self, container: str, positions: list[Position], number: int) -> None:
        if self.options.cache and self._kept(number):
            self.buildah.commit_as(container, cache_image(positions[number].key))

    def _start(self) -> tuple[str, ImageConfig]:
        base, label = self.stage.base, self.stage.name
        match base:
            case ScratchBase():
                return self.buildah.new_container("scratch", label=label), ImageConfig()
            case RegistryBase():
                assert self.image_id is not None
                container = self.buildah.new_container(self.image_id, label=label)
                return container, bases.image_config_of(self.buildah, container)
            case ArchiveBase():
                assert self.base_file is not None
                image_id = self.buildah.pull(f"{base.kind}:{self.base_file}")
                container = self.buildah.new_container(image_id, label=label)
                return container, bases.image_config_of(self.buildah, container)
            case RootfsBase() | BootstrapBase():
                assert self.base_file is not None
                return bases.prepare_rootfs(self.buildah, self.base_file, label), ImageConfig()
            case AciBase():
                assert self.base_file is not None
                return bases.prepare_aci(self.buildah, self.base_file, label)
            case StageBase():
                earlier = self.built[base.stage]
                if earlier.cached:
                    image = cache_image(earlier.key)
                else:
                    image = self.buildah.commit(earlier.container, label=base.stage)
                return self.buildah.new_container(image, label=label), earlier.inherited

    # The config a base brings is not in the cached trees (buildah commit adds its own label),
    # so for image bases it is kept beside them, keyed by the base key.
    def _config_file(self, key: str) -> Path:
        return self.options.cache_dir / "configs" / f"{key}.json"

    def _remember_inherited(self, key: str, container: str) -> None:
        if self.options.cache and isinstance(self.stage.base, (RegistryBase, ArchiveBase)):
            path = self._config_file(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(bases.raw_image_config(self.buildah, container), sort_keys=True))

    def _inherited_known(self, key: str) -> bool:
        return not isinstance(self.stage.base, (RegistryBase, ArchiveBase)) or self._config_file(key).exists()

    def _inherited_on_hit(self, key: str) -> ImageConfig:
        match self.stage.base:
            case RegistryBase() | ArchiveBase():
                return from_docker_config(json.loads(self._config_file(key).read_text()))
            case AciBase():
                assert self.base_file is not None
                return bases.aci_manifest_config(self.base_file)
            case StageBase(stage=name):
                return self.built[name].inherited
            case _:
                return ImageConfig()


def _run_step(
    buildah: Buildah,
    plan: BuildPlan,
    state: _Stage,
    planned: PlannedStep,
    built: dict[str, _Stage],
    on_output: Callable[[str], None],
) -> None:
    step, workdir, root = planned.step, planned.workdir, state.root
    match step:
        case RunStep():
            argv = ["/bin/sh", "-c", step.command] if isinstance(step.command, str) else list(step.command)
            present = {item for item in _RUN_LEFTOVERS if os.path.lexists(root / item)}
            buildah.run_in(
                state.container, argv, user=step.user, workdir=workdir, env=planned.env,
                network=step.network, on_line=on_output,
            )  # fmt: skip
            _remove_run_leftovers(root, present)
        case CopyStep():
            dest = filesteps.container_path(step.to, workdir) + ("/" if step.to.endswith("/") else "")
            if step.from_stage is not None:
                buildah.copy(
                    state.container, list(step.sources), dest, owner=step.owner, mode=step.mode,
                    from_container=built[step.from_stage].container,
                )  # fmt: skip
            else:
                sources = [os.fspath(p) for p in _context_sources(plan.context, step.sources)]
                buildah.copy(
                    state.container, sources, dest, owner=step.owner, mode=step.mode, contextdir=plan.context
                )
        case WriteStep():
            filesteps.write_file(
                root, filesteps.container_path(step.path, workdir), step.content.encode(), mode=step.mode,
                owner=step.owner,
            )  # fmt: skip
        case MkdirStep():
            filesteps.make_directory(
                root, filesteps.container_path(step.path, workdir), parents=step.parents, mode=step.mode,
                owner=step.owner,
            )  # fmt: skip
        case SymlinkStep():
            filesteps.make_symlink(root, filesteps.container_path(step.path, workdir), step.target)
        case RemoveStep():
            for path in step.paths:
                filesteps.remove_path(root, filesteps.container_path(path, workdir))


def _remove_run_leftovers(root: Path, present_before: set[str]) -> None:
    for item in _RUN_LEFTOVERS:
        if item in present_before:
            continue
        path = root / item
        try:
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
            elif path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
                path.unlink()
        except OSError as error:
            log.debug("could not remove %s left by buildah run: %s", item, error)


def _context_sources(context: Path, sources: tuple[str, ...]) -> list[Path]:
    """Context files a copy reads: they must exist, and no symlink among them may leave the context.

    Raises:
        BuildError: a source is missing, or a symlink points outside the context.
    """
    real_context = Path(os.path.realpath(context))
    paths: list[Path] = []
    for source in sources:
        pattern = os.fspath(context / source)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(source) else [pattern]
        if not matches or not os.path.lexists(matches[0]):
            raise BuildError(f"copy: {source!r} not found in the build context {context}")
        for match in matches:
            _check_inside(Path(match), real_context, source)
            paths.append(Path(match))
    return paths


def _check_inside(path: Path, real_context: Path, source: str) -> None:
    def check(candidate: Path) -> None:
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(real_context):
            shown = os.readlink(candidate) if candidate.is_symlink() else str(real)
            raise BuildError(
                f"copy {source!r}: {candidate} is a symlink pointing outside the build context "
                f"(-> {shown}); refusing to follow it",
                hint="copy the file it points to into the context instead",
            )

    check(path)
    if path.is_dir() and not path.is_symlink():
        for directory, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                candidate = Path(directory) / name
                if candidate.is_symlink():
                    check(candidate)
