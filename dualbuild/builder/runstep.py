"""A run step: the secrets and cache folders bound for it, the command, then the runtime's stubs.

The runtime makes a missing mount target in the tree (an empty file or folder); after the step
those it made are removed again, and only those: see :func:`remove_mount_stubs`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dualbuild.builder import cachemounts
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.runtime import Bind
from dualbuild.builder.secrets import SecretFiles
from dualbuild.errors import BuildError
from dualbuild.layer.tree import resolve_in_root
from dualbuild.log import log
from dualbuild.plan import PlannedStep
from dualbuild.recipe.model import RunStep

# The mode the runtime gives a mount target file it creates (runc, and buildah's chroot).
MOUNT_STUB_MODE = 0o755


@dataclass
class RunMounts:
    """What a build binds into its run steps: its secrets' files, this machine's cache folders."""

    secret_files: SecretFiles
    cache_dir: Path
    arch: str

    @contextmanager
    def binds(self, step: RunStep) -> Iterator[list[Bind]]:
        """The step's binds, its cache folders locked (shared or exclusive) while it runs."""
        secrets = [
            Bind(source=self.secret_files.path(secret.id), target=secret.path, read_only=True)
            for secret in step.secrets
        ]
        with cachemounts.held(self.cache_dir, step.cache, self.arch) as held:
            yield secrets + [Bind(source=folder, target=target, read_only=False) for folder, target in held]


def run_command(
    buildah: Buildah,
    container: str,
    root: Path,
    planned: PlannedStep,
    mounts: RunMounts,
    on_output: Callable[[str], None],
) -> None:
    """Run a run step's command in ``container`` (its tree mounted at ``root``).

    Raises:
        CommandError: the command failed.
        BuildError: a bind cannot be made.
        RecipeError: a secret's file or variable went since the build was checked.
    """
    step = planned.step
    assert isinstance(step, RunStep)
    argv = ["/bin/sh", "-c", step.command] if isinstance(step.command, str) else list(step.command)
    with mounts.binds(step) as binds:
        targets = buildah.mount_targets(step.network, binds)
        absent = [item for item in dict.fromkeys(targets) if _absent(root, item)]
        buildah.run_in(
            container, argv, user=step.user, workdir=planned.workdir, env=planned.env,
            network=step.network, on_line=on_output, binds=binds,
        )  # fmt: skip
        remove_mount_stubs(root, absent)


def remove_mount_stubs(root: Path, absent_before: Sequence[str]) -> None:
    """Remove the mount targets the runtime made for a step, and nothing the step made itself.

    Only paths that were absent before the step and were mounted over during it are looked
    at, so the step could not write there (a file it made under ``network = "none"``, where
    hosts and resolv.conf are not mounted, stays). A file must still be the runtime's: empty,
    root's, mode 0755; a directory empty.
    """
    # The deepest first: a folder the runtime made for a bind is empty once its target is gone.
    for item in sorted(absent_before, key=lambda item: item.count("/"), reverse=True):
        try:
            path = in_root(root, item)
            if path == root:
                continue
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                if not any(path.iterdir()):
                    path.rmdir()
            elif (
                stat.S_ISREG(info.st_mode)
                and info.st_size == 0
                and info.st_uid == 0
                and stat.S_IMODE(info.st_mode) == MOUNT_STUB_MODE
            ):
                path.unlink()
        except FileNotFoundError:
            continue
        except (OSError, BuildError) as error:
            log.debug("could not remove %s left by buildah run: %s", item, error)


def in_root(root: Path, item: str) -> Path:
    """Where ``item`` is in the tree, as the runtime places a mount target.

    Its symlinks are read inside the root: /var/run -> /run is the tree's /run, never the host's.
    """
    return Path(os.fsdecode(resolve_in_root(os.fsencode(root), os.fsencode(item), follow_last=False)))


def _absent(root: Path, item: str) -> bool:
    try:
        return not os.path.lexists(in_root(root, item))
    except BuildError:
        return False  # a symlink loop: nothing the runtime can have made there
