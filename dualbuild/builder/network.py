"""The private network of run steps: a namespace of the build's own, reaching out through slirp4netns.

``network = "private"`` (the default) must reach package mirrors but not the services on the
host's loopback (a database, a registry, a metadata proxy on 127.0.0.1). buildah's own
``--network private`` needs a CNI bridge whose NAT works on the host, which is not a given
(it does not on a VM with no forwarding upstream); slirp4netns needs nothing of the host:
connections leave from its process, as the build's own would, and ``--disable-host-loopback``
refuses 127.0.0.1 and the host's address. One namespace serves every private step of a build.

The namespace is a file under /run/netns (named by our PID) and slirp4netns exits when our end
of its exit pipe closes, so a build killed with SIGKILL leaves only that file: the next build
removes the ones whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import run
from dualbuild.errors import ToolNotFoundError
from dualbuild.leftovers import left_by_dead_process
from dualbuild.log import log

NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "dualbuild-"
# slirp4netns' largest MTU: fewer, bigger packets through the user-mode stack.
SLIRP_MTU = "65520"


@dataclass
class PrivateNetwork:
    """A network namespace with a user-mode uplink, made on first use, removed by close()."""

    name: str = field(default_factory=lambda: f"{NAME_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    _helper: run.Helper | None = None
    _made: bool = False

    @property
    def path(self) -> Path:
        """The namespace file, for ``buildah run --network ns:PATH`` (or nsenter)."""
        return NETNS_DIR / self.name

    def open(self) -> Path:
        """Make the namespace and bring its uplink up (once); returns its path."""
        if self._helper is not None:
            return self.path
        ip = run.find_tool("ip", "give run steps a private network")
        slirp = run.find_tool("slirp4netns", "give run steps a private network")
        reclaim_stale()
        run.run([ip, "netns", "add", self.name], shield=True)
        self._made = True
        self._helper = run.start_helper(
            lambda exit_fd, ready_fd: [
                slirp, "--configure", "--mtu", SLIRP_MTU, "--disable-host-loopback",
                "--exit-fd", str(exit_fd), "--ready-fd", str(ready_fd), "--netns-type", "path",
                self.path, "tap0",
            ]
        )  # fmt: skip
        log.debug("private network %s is up", self.name)
        return self.path

    def close(self) -> None:
        """Stop the uplink and remove the namespace. Never raises."""
        if self._helper is not None:
            self._helper.stop()
            self._helper = None
        if self._made:
            _delete(self.name)
            self._made = False


def reclaim_stale() -> None:
    """Remove the namespaces of dualbuild processes that are gone (killed before they could)."""
    for entry in NETNS_DIR.iterdir() if NETNS_DIR.is_dir() else []:
        if not left_by_dead_process(entry.name, NAME_PREFIX):
            continue
        log.debug("removing the private network %s of a dualbuild process that is gone", entry.name)
        _delete(entry.name)


def _delete(name: str) -> None:
    with contextlib.suppress(ToolNotFoundError):
        ip = run.find_tool("ip", "remove a private network")
        run.run([ip, "netns", "delete", name], check=False, shield=True)
