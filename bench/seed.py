"""The seed pipeline (issue 19), the second peer of benchmark (a).

The project's seed made its two formats with Docker and a converter, one after the other:
``DOCKER_BUILDKIT=0 docker build`` + ``docker save`` + ``docker2aci`` + ``gpg --detach-sign``
(bench/seed-pipeline.sh). Here: finding docker2aci (a binary, or a source checkout built into
the bench's own cache with Go in GOPATH mode, never into the repository), a private dockerd
(own data root, exec root and socket, like tests/integration/conftest.py's fixture), and one
timed run of the pipeline against it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchenv import BENCH, ChildResult, log, run_child

ENV_VAR = "DUALBUILD_BENCH_DOCKER2ACI"
LEFT_OUT = "seed pipeline: no docker2aci given (--docker2aci or $DUALBUILD_BENCH_DOCKER2ACI); column left out"
IMPORT_PATH = "github.com/appc/docker2aci"
DOCKERFILE = """\
# Benchmark (a) as the seed built it: the minbase rootfs, then the recipe's one write step.
FROM scratch
ADD minbase.tar /
COPY bench-marker /etc/bench-marker
CMD ["/bin/bash"]
"""
MARKER = "built by the dualbuild benchmark\n"
_DAEMON_START_SECONDS = 120


def given_docker2aci(option: Path | None) -> Path | None:
    """The --docker2aci option, else $DUALBUILD_BENCH_DOCKER2ACI, else None."""
    if option is not None:
        return option.expanduser()
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def ensure_docker2aci(given: Path, cache: Path) -> Path:
    """A docker2aci binary: ``given`` itself, or built from the source checkout ``given``.

    The source is copied to ``CACHE/gopath/src/github.com/appc/docker2aci`` (unless it is that
    directory already) and built with ``GO111MODULE=off`` against its vendor/ directory into
    ``CACHE/docker2aci``; Go's build cache is ``CACHE/go-build``. A binary built from the same
    source files is reused.
    """
    if not given.exists():
        raise SystemExit(f"docker2aci {given}: no such file or directory")
    if given.is_file():
        if not os.access(given, os.X_OK):
            raise SystemExit(f"docker2aci {given}: not executable")
        return given.resolve()
    if not (given / "main.go").is_file() or not (given / "vendor").is_dir():
        raise SystemExit(f"docker2aci {given}: not a docker2aci source checkout (main.go and vendor/)")
    if shutil.which("go") is None:
        raise SystemExit("go is needed to build docker2aci from source (Debian: apt-get install golang-go)")
    binary = cache / "docker2aci"
    stamp = cache / "docker2aci.source"
    digest = _source_digest(given)
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return binary
    gopath = cache / "gopath"
    target = gopath / "src" / IMPORT_PATH
    if given.resolve() != target.resolve():
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(given, target, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    log(f"building docker2aci from {given} in {gopath} (GOPATH mode, vendored dependencies)")
    partial = cache / "docker2aci.partial"
    env = {
        **os.environ, "GO111MODULE": "off", "GOPATH": str(gopath), "GOCACHE": str(cache / "go-build"),
        "GOFLAGS": "",
    }  # fmt: skip
    subprocess.run(["go", "build", "-o", str(partial), "."], cwd=target, env=env, check=True)
    partial.rename(binary)
    stamp.write_text(digest + "\n")
    return binary


def _source_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        if ".git" in path.relative_to(source).parts or not path.is_file():
            continue
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- a private dockerd ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dockerd:
    """A running private dockerd: its socket and its directory."""

    base: Path
    host: str

    def docker(self, *args: str) -> str:
        """``docker ARGS`` against this daemon; its stdout."""
        done = subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, text=True, check=True, timeout=600
        )
        return done.stdout


@contextlib.contextmanager
def private_dockerd() -> Iterator[Dockerd]:
    """Start dockerd on its own socket, data root and exec root under /tmp; stop and remove it after.

    No bridge and no iptables rules: the seed's Dockerfile runs no command, so it needs no network.
    """
    # Short path: the socket path must stay under the 108-byte unix socket limit.
    base = Path(tempfile.mkdtemp(prefix="dbbd-", dir="/tmp"))
    host = f"unix://{base}/docker.sock"
    log_file = (base / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", f"{base}/data", "--exec-root", f"{base}/exec", "--pidfile",
         f"{base}/docker.pid", "-H", host, "--iptables=false", "--bridge=none"],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + _DAEMON_START_SECONDS
        probe = ["docker", "-H", host, "info"]
        while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{(base / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield Dockerd(base=base, host=host)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=_DAEMON_START_SECONDS)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log_file.close()
        subprocess.run(["umount", "-R", str(base / "data" / "overlay2")], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


# --- the pipeline -----------------------------------------------------------------------------


class SeedPipeline:
    """bench/seed-pipeline.sh against a private dockerd, from a Dockerfile context of the (a) tree."""

    def __init__(self, *, docker2aci: Path, dockerd: Dockerd, work: Path, tarball: Path) -> None:
        self.docker2aci = docker2aci
        self.dockerd = dockerd
        self.context = work / "seed-context"
        self.context.mkdir()
        (self.context / "Dockerfile").write_text(DOCKERFILE)
        (self.context / "bench-marker").write_text(MARKER)
        try:
            os.link(tarball, self.context / "minbase.tar")
        except OSError:
            shutil.copyfile(tarball, self.context / "minbase.tar")
        self._runs = 0

    def run(self, out: Path, *, key: str, env: dict[str, str]) -> ChildResult:
        """One cold run (``--no-cache``, an image name never used before); checks nothing is left."""
        self._runs += 1
        image = f"example.com/bench/minbase:1.0.0-seed{self._runs}"
        result = run_child(
            ["bash", str(BENCH / "seed-pipeline.sh"), str(self.context), str(out), key, str(self.docker2aci),
             image],
            env={**env, "DOCKER_HOST": self.dockerd.host},
        )  # fmt: skip
        self.check_empty()
        return result

    def check_empty(self) -> None:
        """No image or container may outlive a run: the next one would find its layers."""
        images = self.dockerd.docker("images", "--all", "--quiet").split()
        containers = self.dockerd.docker("ps", "--all", "--quiet").split()
        if images or containers:
            raise RuntimeError(f"the seed pipeline left images {images} and containers {containers}")

    def facts(self) -> dict[str, object]:
        """What was measured: docker's and docker2aci's versions, the Dockerfile."""
        version = subprocess.run([str(self.docker2aci), "-version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")  # fmt: skip
        return {
            "docker": self.dockerd.docker("version", "--format", "{{.Server.Version}}").strip(),
            "storage_driver": self.dockerd.docker("info", "--format", "{{.Driver}}").strip(),
            "docker2aci": version[0].strip(),
            "docker2aci_path": str(self.docker2aci),
            "dockerfile": DOCKERFILE,
        }
