"""Running a BuildPlan's stages with buildah and handing over the final tree.

``build_stages`` is a context manager: inside it the final stage's root filesystem is mounted
and its config known; on leaving it (success, failure or interrupt) every container is gone.
"""

from __future__ import annotations

import glob
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import bases, fsops, run
from dualbuild.buildah import Buildah, StorageOptions
from dualbuild.errors import BuildError, CommandError
from dualbuild.imageconfig import ImageConfig, apply_app
from dualbuild.log import log
from dualbuild.model import (
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
from dualbuild.plan import BuildPlan, PlannedStage, PlannedStep

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
    on_output: Callable[[str], None] | None = None


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """The final stage's mounted tree and the image config ([app] applied)."""

    rootfs: Path
    config: ImageConfig


@dataclass
class _Stage:
    container: str
    root: Path
    inherited: ImageConfig


def _print_output(line: str) -> None:
    sys.stderr.write(f"  | {line}\n")
    sys.stderr.flush()


@contextmanager
def build_stages(plan: BuildPlan, options: BuildOptions) -> Iterator[BuiltImage]:
    """Build every stage; yield the final tree while it is mounted; then remove everything.

    Raises:
        BuildError: a base is missing or a step failed (naming stage, step and command).
        ToolNotFoundError: buildah (or a tool a base needs) is missing.
    """
    buildah = Buildah(
        storage=options.storage, isolation=options.isolation, cache_dir=options.cache_dir,
        authfile=options.authfile,
    )  # fmt: skip
    on_output = options.on_output or _print_output
    try:
        built: dict[str, _Stage] = {}
        for stage in plan.stages:
            built[stage.name] = _build_stage(buildah, plan, stage, built, options, on_output)
        final = built[plan.final_stage.name]
        recipe = plan.recipe
        yield BuiltImage(
            rootfs=final.root, config=apply_app(final.inherited, recipe.app, recipe.image.labels)
        )
    finally:
        with run.deferred_interrupts():
            buildah.cleanup()


def _stage_label(plan: BuildPlan, stage: PlannedStage) -> str:
    return f"[{stage.number}/{len(plan.stages)} {stage.name}]"


def _build_stage(
    buildah: Buildah,
    plan: BuildPlan,
    stage: PlannedStage,
    built: dict[str, _Stage],
    options: BuildOptions,
    on_output: Callable[[str], None],
) -> _Stage:
    label = _stage_label(plan, stage)
    log.info("%s from %s", label, stage.base.describe())
    container, inherited = _start(buildah, plan, stage, built, options, on_output)
    state = _Stage(container=container, root=buildah.mount(container), inherited=inherited)
    for step in stage.steps:
        log.info("%s step %d/%d %s", label, step.number, len(stage.steps), step.summary)
        try:
            _run_step(buildah, plan, state, step, built, on_output)
        except CommandError as error:
            raise BuildError(
                f"{label} step {step.number}/{len(stage.steps)} ({step.summary}) failed with exit code "
                f"{error.returncode}\ncommand: {shlex.join(error.argv)}\nlast lines of its output:\n"
                f"{error.output_tail}",
            ) from None
        except BuildError as error:
            raise BuildError(
                f"{label} step {step.number}/{len(stage.steps)}: {error.message}", hint=error.hint
            ) from None
    return state


def _start(
    buildah: Buildah,
    plan: BuildPlan,
    stage: PlannedStage,
    built: dict[str, _Stage],
    options: BuildOptions,
    on_output: Callable[[str], None],
) -> tuple[str, ImageConfig]:
    base = stage.base
    label = stage.name
    match base:
        case ScratchBase():
            return buildah.new_container("scratch", label=label), ImageConfig()
        case RegistryBase():
            container = buildah.new_container(
                base.reference, label=label, tls_verify=stage.tls_verify and options.tls_verify
            )
            return container, bases.image_config_of(buildah, container)
        case ArchiveBase():
            container = buildah.new_container(bases.archive_reference(base, plan.context), label=label)
            return container, bases.image_config_of(buildah, container)
        case RootfsBase():
            return bases.prepare_rootfs(
                buildah, bases.rootfs_tarball(base, plan.context), label
            ), ImageConfig()
        case BootstrapBase():
            arch = plan.recipe.image.arch
            tarball = bases.bootstrap_tarball(base, arch, options.cache_dir, on_output)
            return bases.prepare_rootfs(buildah, tarball, label), ImageConfig()
        case AciBase():
            return bases.prepare_aci(buildah, base, plan.context, label, options.keyring)
        case StageBase():
            earlier = built[base.stage]
            image = buildah.commit(earlier.container, label=base.stage)
            return buildah.new_container(image, label=label), earlier.inherited


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
            dest = fsops.container_path(step.to, workdir) + ("/" if step.to.endswith("/") else "")
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
            fsops.write_file(
                root, fsops.container_path(step.path, workdir), step.content.encode(), mode=step.mode,
                owner=step.owner,
            )  # fmt: skip
        case MkdirStep():
            fsops.make_directory(
                root, fsops.container_path(step.path, workdir), parents=step.parents, mode=step.mode,
                owner=step.owner,
            )  # fmt: skip
        case SymlinkStep():
            fsops.make_symlink(root, fsops.container_path(step.path, workdir), step.target)
        case RemoveStep():
            for path in step.paths:
                fsops.remove_path(root, fsops.container_path(path, workdir))


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
