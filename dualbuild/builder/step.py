"""One step of a stage, done on its container.

A run step through ``buildah run``, a copy through ``buildah copy`` (from the context, with its
ignore file, or from an earlier stage), the file steps on the mounted root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from dualbuild.builder import filesteps
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.context import buildah_ignore_file
from dualbuild.builder.keys import KeyedStage
from dualbuild.builder.runstep import RunMounts, run_command
from dualbuild.plan import PlannedStep
from dualbuild.recipe.model import CopyStep, MkdirStep, RemoveStep, RunStep, SymlinkStep, WriteStep


def run_step(
    buildah: Buildah,
    keyed: KeyedStage,
    context: Path,
    container: str,
    root: Path,
    planned: PlannedStep,
    stage_containers: Mapping[str, str],
    mounts: RunMounts,
    on_output: Callable[[str], None],
) -> None:
    """Run one step on a stage's container (mounted at ``root``).

    Raises:
        CommandError: a buildah command (run, copy) failed.
        BuildError: a file step cannot be done (a path leads out of the root, a parent is missing).
    """
    step, workdir = planned.step, planned.workdir
    match step:
        case RunStep():
            run_command(buildah, container, root, planned, mounts, on_output)
        case CopyStep():
            dest = filesteps.container_path(step.to, workdir) + ("/" if step.to.endswith("/") else "")
            if step.from_stage is not None:
                buildah.copy(
                    container, list(step.sources), dest, owner=step.owner, mode=step.mode,
                    from_container=stage_containers[step.from_stage],
                )  # fmt: skip
            else:
                copy = keyed.sources[planned.number]
                with buildah_ignore_file(copy) as ignorefile:
                    buildah.copy(
                        container, [os.fspath(path) for path in copy.sources], dest, owner=step.owner,
                        mode=step.mode, contextdir=context, ignorefile=ignorefile,
                    )  # fmt: skip
        case _:
            file_step(root, planned)


def file_step(root: Path | filesteps.StepRoot, planned: PlannedStep) -> None:
    """Do a write, mkdir, symlink or remove step on a root (mounted, or held in memory).

    Raises:
        BuildError: the step cannot be done (a path leads out of the root, a parent is missing).
    """
    step, workdir = planned.step, planned.workdir
    match step:
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
        case _:
            raise AssertionError(f"not a file step: {step!r}")
