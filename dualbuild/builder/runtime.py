"""What the OCI runtime makes for a run step: the mounts over its tree, and its state.

The runtime creates a missing mount target in the tree itself (see MOUNTED_FILES); what the
step's binds (secrets, caches) need is said by :class:`Bind`. Its state and cgroups live in a
state root of the session's own (``RUNTIME_STATE_DIR``), removed with what an interrupted step
left there.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from dualbuild import run
from dualbuild.errors import BuildError
from dualbuild.log import log

# What `buildah run` mounts over a step's tree, relative to its root. The runtime creates a
# missing mount target itself (files with mode 0755, empty, root's; directories 0755), and the
# step cannot write to it: what it writes there goes into the mounted file. /run holds the
# mount of /run/.containerenv, which buildah removes again afterwards.
MOUNTED_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")
MOUNTED_DIRECTORIES = ("dev", "proc", "sys", "run")
# With no network, the OCI runtimes get no hosts or resolv.conf mount: a step makes its own.
NOT_MOUNTED_WITHOUT_NETWORK = frozenset({"etc/hosts", "etc/resolv.conf"})
# OCI runtimes buildah may run a step with; what one leaves is found in our state root by each.
RUNTIMES = ("runc", "crun")
# Where the runtime's state of a session's run steps goes: a tmpfs, as runc asks.
RUNTIME_STATE_DIR = Path("/run")
RUNTIME_PREFIX = "dualbuild-runtime-"
# Where cgroups of a container named ID live (v1 controllers, or the unified v2 tree).
_CGROUPS = ("/sys/fs/cgroup/*/{id}", "/sys/fs/cgroup/{id}")


@dataclass(frozen=True)
class Bind:
    """A host file or folder mounted at ``target`` for one run step."""

    source: Path
    target: str
    read_only: bool

    def option(self) -> str:
        """The --mount value (buildah splits it on commas: the recipe refuses them in targets)."""
        if "," in os.fspath(self.source):
            raise BuildError(
                f"cannot mount {self.source} for a run step: buildah's --mount cannot take a comma in a path",
                hint="use a cache folder ($XDG_CACHE_HOME) whose path has no comma",
            )
        access = "ro" if self.read_only else "rw"
        return f"type=bind,source={self.source},target={self.target},{access}"


def remove_runtime_root(root: Path) -> None:
    """Delete the runtime's containers in a state root (killing what runs there), then the root."""
    for name in RUNTIMES:
        binary = shutil.which(name)
        if binary is None:
            continue
        listed = run.run([binary, "--root", root, "list", "-q"], check=False)
        for container_id in listed.stdout.split() if listed.returncode == 0 else []:
            log.debug("removing %s container %s left by an interrupted run step", name, container_id)
            run.run([binary, "--root", root, "delete", "--force", container_id], check=False)
    # A container killed before the runtime saved its state is unknown to it: its cgroups
    # (and any process still in them) go by the state folder's name.
    for state in root.iterdir() if root.is_dir() else []:
        for pattern in _CGROUPS:
            for cgroup in glob.glob(pattern.format(id=glob.escape(state.name))):
                _remove_cgroup(Path(cgroup))
    shutil.rmtree(root, ignore_errors=True)


def _remove_cgroup(cgroup: Path) -> None:
    """Kill what is left in a cgroup of ours, then remove it (an empty cgroup is an rmdir)."""
    try:
        pids = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        pids = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for attempt in range(50):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            # Busy until the killed processes are reaped by the kernel.
            time.sleep(0.02 * (attempt + 1) if attempt < 10 else 0.2)
    log.warning("could not remove the cgroup %s of an interrupted run step", cgroup)
