"""buildah, driven through run.py: working containers, mounts, run, copy, commit, inspect.

Every container made here is tracked by its ``Buildah`` object and removed by ``cleanup()``,
which the build calls on success, failure and interruption alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import run
from dualbuild.builder import runtime
from dualbuild.builder.network import PrivateNetwork, reclaim_stale
from dualbuild.builder.runtime import (
    MOUNTED_DIRECTORIES,
    MOUNTED_FILES,
    NOT_MOUNTED_WITHOUT_NETWORK,
    RUNTIME_PREFIX,
    Bind,
    remove_runtime_root,
)
from dualbuild.builder.storage import StorageOptions
from dualbuild.errors import BuildError, CommandError, UsageError
from dualbuild.files import scratch_prefix, write_atomically
from dualbuild.leftovers import (
    BUILDAH_TMP_KIND,
    STORE_DIR,
    kill_commands_of_dead_processes,
    left_by_dead_process,
    remove_scratch,
)
from dualbuild.log import log
from dualbuild.recipe.model import Network

# How `buildah run` isolates a step. buildah's default OCI runtime (crun) fails on hosts with
# hybrid cgroups; runc or chroot isolation work there, so the first that runs is chosen.
ISOLATIONS: dict[str, tuple[str, ...]] = {
    "oci": ("--isolation", "oci"),
    "runc": ("--isolation", "oci", "--runtime", "runc"),
    "chroot": ("--isolation", "chroot"),
}
# chroot does not contain a run step (a classic breakout reaches the host): only when asked.
PROBE_ORDER = ("oci", "runc")
NAME_PREFIX = "dualbuild-"
# The label of images committed to outlive the build (cache entries).
KEPT_LABEL = "io.dualbuild.kept"
# containers/storage's complaint about an image record whose data is gone, and its id.
_BROKEN_IMAGE = re.compile(r'locating item named "[^"]+" for image with ID "([0-9a-f]{64})"')
_MAX_BROKEN_IMAGES = 8
TREE_LABEL = "io.dualbuild.tree"


@dataclass
class Buildah:
    """A buildah session: the containers and images it made, removed again by cleanup()."""

    storage: StorageOptions = field(default_factory=StorageOptions)
    isolation: str | None = None
    cache_dir: Path | None = None
    authfile: Path | None = None
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    made: int = 0
    # Names what the session makes: our PID first, so that what a killed build left is known.
    session: str = field(default_factory=lambda: f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    # The OCI runtime's state of this session's run steps (runc --root), made on first use.
    runtime_root: Path | None = None
    # buildah's own temporary folders (its TMPDIR), in a scratch folder of ours, made on first
    # use: an interrupted buildah leaves `buildahNNN` folders in /var/tmp that nobody removes.
    tmpdir: Path | None = None
    # The network of `network = "private"` steps, made on first use.
    private_network: PrivateNetwork = field(default_factory=PrivateNetwork)

    def __post_init__(self) -> None:
        self.binary = run.find_tool("buildah", "build the image's root filesystem")
        if self.isolation == "chroot":
            log.warning(
                "isolation chroot: run steps are not contained (a step can reach the host's files and"
                " processes); what a step leaves running is killed after it"
            )
        if self.isolation is not None and self.isolation not in ISOLATIONS:
            raise UsageError(
                f"unknown isolation {self.isolation!r}", hint=f"use one of: {', '.join(ISOLATIONS)}"
            )

    def _argv(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        return [self.binary, *self.storage.argv(), *args]

    def _run(self, *args: str | os.PathLike[str], **kwargs: object) -> run.Result:
        return self._run_argv(self._argv(*args), **kwargs)

    def _run_argv(self, argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> run.Result:
        """Run a buildah command line (perhaps behind a wrapper) with the session's TMPDIR."""
        return run.run(argv, env=self.environment(), **kwargs)  # type: ignore[arg-type]

    def environment(self) -> dict[str, str]:
        """The environment of the session's tools: TMPDIR in a scratch folder of the session's.

        A tool that outlives a build killed with SIGKILL is known by it, and killed (leftovers).
        """
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix=scratch_prefix(BUILDAH_TMP_KIND), dir=STORE_DIR))
        return {**os.environ, "TMPDIR": os.fspath(self.tmpdir)}

    # --- containers ---------------------------------------------------------------------------

    def pull(self, image: str, *, tls_verify: bool = True) -> str:
        """``buildah pull``: bring an image into the store; returns its image id.

        Raises:
            BuildError: the image cannot be pulled (naming it, with buildah's reason).
        """
        args = ["pull", "--quiet"]
        if not tls_verify:
            args.append("--tls-verify=false")
        if self.authfile is not None:
            args += ["--authfile", os.fspath(self.authfile)]
        # A local archive's pull is not stopped half-way either (see commit_as); a registry's,
        # which may take long, writes its image record only once the layers are in.
        local = image.startswith(("docker-archive:", "oci-archive:"))
        try:
            return self._run(*args, image, shield=local).stdout.strip().splitlines()[-1]
        except (CommandError, IndexError) as error:
            tail = error.output_tail if isinstance(error, CommandError) else "no image id printed"
            raise BuildError(
                f"cannot use base {image!r}: buildah pull failed\n{tail}",
                hint="check the reference, credentials (--authfile) and tls_verify",
            ) from None

    def new_container(self, image: str, *, label: str) -> str:
        """``buildah from`` a local image ("scratch" for none); pull() first for remote ones.

        Interrupts are held while it runs: a ``buildah from`` killed half-way leaves a
        container record that ``buildah rm`` can no longer remove.
        """
        # Numbered by how many the session made: containers removed on the way free no number.
        self.made += 1
        name = f"{NAME_PREFIX}{self.session}-{self.made - 1}-{label}"
        # Registered before it exists, so cleanup removes it by name whatever happens next.
        self.containers.append(name)
        self._run("from", "--quiet", "--pull=never", "--name", name, image, shield=True)
        return name

    def remove_container(self, container: str) -> None:
        """Remove a container this session made (unmounting it), before the session ends.

        Not stopped half-way by an interrupt (see commit_as): a ``buildah rm`` killed while it
        works can leave the container's overlay mounted and its record gone, so that no later
        ``buildah rm`` unmounts it.
        """
        self._run("rm", container, check=False, shield=True)
        self.containers.remove(container)

    def commit_as(self, container: str, image: str, *, tree_digest: str) -> None:
        """Commit a container to a named image that outlives the build (a cache entry).

        The image carries KEPT_LABEL: when another build commits the same name, this one loses
        it, and the label is how it is found again (list_images(dangling=True)). It carries
        the digest of its tree (TREE_LABEL), checked before the tree is used again: with the
        image, not beside it, so that a store and its digests cannot part.
        """
        self._run(
            "config", "--label", f"{KEPT_LABEL}=true", "--label", f"{TREE_LABEL}={tree_digest}", container
        )
        # Not stopped half-way: a commit killed between its image record and the image's
        # manifest leaves an image every later `buildah images` fails on (the whole store).
        self._run("commit", "--quiet", container, image, shield=True)

    def label(self, name: str, *, container: str) -> str | None:
        """A label of a container's config (its image's, as it was made from it); None if none."""
        result = self._run("inspect", "--type", "container", container, check=False)
        try:
            labels = (
                json.loads(result.stdout)["OCIv1"]["config"]["Labels"] if result.returncode == 0 else None
            )
        except (ValueError, KeyError, TypeError):
            return None
        value = labels.get(name) if isinstance(labels, dict) else None
        return value if isinstance(value, str) else None

    def image_digest(self, image: str) -> str | None:
        """The digest of the manifest an image was pulled by (``FromImageDigest``); None if unknown."""
        result = self._run("inspect", "--type", "image", image, check=False)
        try:
            digest = json.loads(result.stdout).get("FromImageDigest") if result.returncode == 0 else None
        except (ValueError, AttributeError):
            return None
        return digest if isinstance(digest, str) and digest.startswith("sha256:") else None

    def list_images(self, repository: str, *, dangling: bool = False) -> list[dict[str, object]]:
        """Images of a repository as ``buildah images --json`` describes them.

        With ``dangling``: instead, the kept images that lost their name to a later commit.
        """
        filters = (
            ["--filter", "dangling=true", "--filter", f"label={KEPT_LABEL}=true"]
            if dangling
            else ["--filter", f"reference={repository}"]
        )
        for _ in range(_MAX_BROKEN_IMAGES):
            listed = self._run("images", "--json", *filters, check=False)
            broken = _BROKEN_IMAGE.search(listed.tail) if listed.returncode != 0 else None
            if broken is None:
                break
            # An image a killed buildah left half-written fails every listing of the store: it
            # holds no tree anyone can use, so it goes (and the listing is asked again).
            log.warning("removing image %s, which buildah left incomplete: %s", broken[1][:12], broken[0])
            self._run("rmi", "--force", broken[1], check=False)
        if listed.returncode != 0:
            listed = self._run("images", "--json", *filters)  # raises, with buildah's words
        return _json_list(listed.stdout)

    def remove_image(self, image: str) -> bool:
        """Remove an image; False if buildah refused (in use, already gone)."""
        return self._run("rmi", image, check=False).returncode == 0

    def mount(self, container: str) -> Path:
        """Mount a container's root filesystem; returns the host path."""
        return Path(self._run("mount", container, shield=True).stdout.strip())

    def run_in(
        self,
        container: str,
        argv: Sequence[str],
        *,
        user: str | None,
        workdir: str | None,
        env: Mapping[str, str],
        network: Network,
        on_line: Callable[[str], None],
        binds: Sequence[Bind] = (),
    ) -> None:
        """``buildah run``: a command in the container, output streamed line by line.

        ``binds`` are host files and folders mounted for this command only (secrets, caches).
        """
        isolation = self.chosen_isolation()
        args: list[str] = ["run", *ISOLATIONS[isolation]]
        wrapper: list[str] = []
        if network is Network.PRIVATE:
            namespace = self.private_network.open()
            if isolation == "chroot":
                # chroot isolation joins no namespace itself: buildah starts inside it.
                wrapper = [run.find_tool("nsenter", "run a step in its network"), f"--net={namespace}", "--"]
            else:
                args += ["--network", f"ns:{namespace}"]
        elif network is Network.NONE and isolation == "chroot":
            # chroot isolation cannot make a network namespace; give buildah a fresh empty one.
            wrapper = [run.find_tool("unshare", "run a step without network"), "--net", "--"]
        else:
            args += ["--network", network.value]
        if user:
            args += ["--user", user]
        if workdir:
            args += ["--workingdir", workdir]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        for bind in binds:
            args += ["--mount", bind.option()]
        args += self._runtime_flags(isolation)
        command = [*wrapper, *self._argv(*args, container, "--", *argv)]
        if isolation != "chroot":
            self._run_argv(command, on_line=on_line)
            return
        # No PID namespace, no cgroup of its own: what the step leaves running is found as
        # our orphans (we are their subreaper) and killed, as a container's end would.
        with run.orphans_adopted():
            before = run.children()
            try:
                self._run_argv(command, on_line=on_line)
            finally:
                killed = run.kill_new_children(before)
                if killed:
                    log.warning("killed %d process(es) the run step left running (chroot isolation)", killed)

    def mount_targets(self, network: Network, binds: Sequence[Bind] = ()) -> tuple[str, ...]:
        """The paths ``run_in`` with this network and these binds mounts over (see MOUNTED_FILES).

        Each bind's target comes with the folders above it, which the runtime makes when missing.
        """
        targets: tuple[str, ...] = MOUNTED_FILES + MOUNTED_DIRECTORIES
        for bind in binds:
            parts = bind.target.strip("/").split("/")
            targets += tuple("/".join(parts[: end + 1]) for end in range(len(parts)))
        if network is Network.NONE and self.chosen_isolation() != "chroot":
            # Under chroot, `unshare --net` gives buildah its default network set-up, mounts included.
            return tuple(target for target in targets if target not in NOT_MOUNTED_WITHOUT_NETWORK)
        return targets

    def _runtime_flags(self, isolation: str) -> list[str]:
        """Keep the runtime's state of our run steps in a folder of this session's own.

        A `buildah run` stopped between the runtime's create and start leaves a container
        (a `runc init` waiting, its state, its cgroups) that buildah never deletes; in our own
        state root, cleanup() finds exactly those, and nobody else's.
        """
        if isolation == "chroot":
            return []
        if self.runtime_root is None:
            base = runtime.RUNTIME_STATE_DIR if os.access(runtime.RUNTIME_STATE_DIR, os.W_OK) else None
            self.runtime_root = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{self.session}-", dir=base))
        return ["--runtime-flag", f"root={self.runtime_root}"]

    def copy(
        self,
        container: str,
        sources: Sequence[str],
        dest: str,
        *,
        owner: str | None,
        mode: int | None,
        from_container: str | None = None,
        contextdir: Path | None = None,
        ignorefile: Path | None = None,
    ) -> None:
        """``buildah copy`` with Docker COPY semantics (``ignorefile`` only with ``contextdir``)."""
        args = ["copy", "--quiet", "--chown", owner or "0:0"]
        if mode is not None:
            args += ["--chmod", f"{mode:o}"]
        if from_container is not None:
            args += ["--from", from_container]
        if contextdir is not None:
            args += ["--contextdir", os.fspath(contextdir)]
        if ignorefile is not None:
            args += ["--ignorefile", os.fspath(ignorefile)]
        self._run(*args, container, *sources, dest)

    def add_archive(self, container: str, archive: Path) -> None:
        """Extract a tarball into the container's root (buildah extracts in a chroot)."""
        self._run("add", "--quiet", container, os.fspath(archive), "/")

    def commit(self, container: str, label: str) -> str:
        """Commit a container to a temporary image (removed by cleanup); returns its name."""
        image = f"localhost/{NAME_PREFIX}{self.session}-{label}:stage"
        self.images.append(image)
        self._run("commit", "--quiet", container, image, shield=True)  # see commit_as
        return image

    def inspect(self, container: str) -> dict[str, object]:
        """``buildah inspect`` of a container, parsed."""
        data = json.loads(self._run("inspect", "--type", "container", container).stdout)
        if not isinstance(data, dict):
            raise BuildError(f"unexpected buildah inspect output for {container}")
        return data

    def cleanup(self) -> None:
        """Unmount and remove every container and image this session made. Never raises."""
        self._remove_runtime_leftovers()
        self.private_network.close()
        for container in reversed(self.containers):
            result = self._run("rm", container, check=False)
            if result.returncode != 0 and "no container" not in result.tail.lower():
                log.warning("could not remove buildah container %s: %s", container, result.tail)
        self.containers.clear()
        for image in reversed(self.images):
            self._run("rmi", "--force", image, check=False)
        self.images.clear()
        if self.tmpdir is not None:
            remove_scratch(self.tmpdir)
            self.tmpdir = None

    def _remove_runtime_leftovers(self) -> None:
        """Delete what an interrupted run step left in our runtime state root, then the root."""
        if self.runtime_root is not None:
            remove_runtime_root(self.runtime_root)
            self.runtime_root = None

    def reclaim_dead_sessions(self) -> None:
        """Remove what builds killed with SIGKILL left: run steps' state, containers, stage images.

        Their names carry the PID of the dualbuild process (``dualbuild-PID-…``): only those
        whose process is gone are touched. Never raises.
        """
        if kill_commands_of_dead_processes(NAME_PREFIX):
            time.sleep(0.2)  # let the kernel reap them, and their storage locks go
        reclaim_stale()  # their private networks
        for root in runtime.RUNTIME_STATE_DIR.glob(f"{RUNTIME_PREFIX}*"):
            if left_by_dead_process(root.name, RUNTIME_PREFIX):
                log.debug("removing the run steps' state %s of a dualbuild process that is gone", root)
                remove_runtime_root(root)
        listed = self._run("containers", "--json", check=False)
        for container in _json_list(listed.stdout) if listed.returncode == 0 else []:
            name = str(container.get("containername", ""))
            if left_by_dead_process(name, NAME_PREFIX):
                log.debug("removing buildah container %s of a dualbuild process that is gone", name)
                self._run("rm", name, check=False)
        listed = self._run("images", "--json", "--filter", "reference=localhost/dualbuild-*", check=False)
        for image in _json_list(listed.stdout) if listed.returncode == 0 else []:
            names = image.get("names")
            for name in names if isinstance(names, list) else []:
                if str(name).endswith(":stage") and left_by_dead_process(
                    str(name), f"localhost/{NAME_PREFIX}"
                ):
                    self._run("rmi", "--force", str(name), check=False)

    # --- isolation ----------------------------------------------------------------------------

    def chosen_isolation(self) -> str:
        """The isolation for run steps: the user's choice, else the remembered probe result."""
        if self.isolation is None:
            self.isolation = self._remembered_isolation() or self._probe_isolation()
        return self.isolation

    def _probe_key(self) -> str:
        version = self._run("version", "--json").stdout
        return json.dumps({"buildah": json.loads(version).get("version"), "kernel": os.uname().release})

    def _probe_file(self) -> Path | None:
        return self.cache_dir / "isolation.json" if self.cache_dir is not None else None

    def _remembered_isolation(self) -> str | None:
        path = self._probe_file()
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        # Only what a probe may choose: an older dualbuild remembered chroot too.
        if data.get("key") == self._probe_key() and data.get("isolation") in PROBE_ORDER:
            log.debug("isolation: %s (remembered in %s)", data["isolation"], path)
            return str(data["isolation"])
        return None

    def _probe_isolation(self) -> str:
        busybox = shutil.which("busybox")
        if busybox is None:
            if shutil.which("runc") is None:
                raise BuildError(
                    "no OCI runtime to contain run steps (runc is not installed)",
                    hint="apt-get install runc (--isolation chroot runs steps without containment)",
                )
            log.info("isolation: runc (not probed: busybox-static is not installed)")
            return "runc"
        container = self.new_container("scratch", label="probe")
        try:
            self._run("copy", "--quiet", container, busybox, "/busybox")
            for choice in PROBE_ORDER:
                argv = self._argv(
                    "run", *ISOLATIONS[choice], "--network", "host", *self._runtime_flags(choice), container,
                    "--", "/busybox", "true",
                )  # fmt: skip
                if self._run_argv(argv, check=False).returncode == 0:
                    break
            else:
                raise BuildError(
                    "buildah cannot run a contained command here (isolation oci and runc failed)",
                    hint="check `buildah run --isolation oci --runtime runc` by hand; is runc installed?"
                    " (--isolation chroot runs steps without containment)",
                )
        finally:
            self._run("rm", container, check=False)
            self.containers.remove(container)
        log.info("isolation: %s (probed; override with --isolation)", choice)
        path = self._probe_file()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, json.dumps({"key": self._probe_key(), "isolation": choice}).encode())
        return choice


def _json_list(text: str) -> list[dict[str, object]]:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
