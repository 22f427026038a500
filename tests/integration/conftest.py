"""The real components the integration tests run: buildah storage, busybox bases, a registry,
a keyring, a private dockerd, and the environment of a `dualbuild` child."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbuild.builder.storage import StorageOptions
from dualbuild.gpg import gpg_env, stop_agent
from tests.integration.helpers import Builder, Docker, buildah
from tests.support import HANG_SECONDS, ROOT, free_port, require_root, require_tools, wait_until_listening


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem tarball made from Debian's busybox-static."""
    require_tools("busybox")
    out = tmp_path_factory.mktemp("busybox") / "busybox-rootfs.tar"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "busybox_rootfs.py"), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def buildah_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageOptions]:
    """A private buildah store for the session; emptied and checked for leftovers at the end."""
    require_root()
    require_tools("buildah")
    base = Path("/tmp") / f"dbt-{os.getpid()}"
    storage = StorageOptions(root=base / "root", runroot=base / "run")
    yield storage
    leftover = subprocess.run(
        ["buildah", *storage.argv(), "containers", "-q"], capture_output=True, text=True, check=False
    ).stdout.split()
    subprocess.run(["buildah", *storage.argv(), "rm", "--all"], capture_output=True, check=False)
    subprocess.run(["buildah", *storage.argv(), "rmi", "--all", "--force"], capture_output=True, check=False)
    subprocess.run(["umount", "-R", str(base / "root" / "overlay")], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(base)], check=False)
    assert not leftover, f"the tests left buildah containers behind: {leftover}"


@pytest.fixture(scope="session")
def busybox_archives(
    buildah_storage: StorageOptions, busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The busybox rootfs as a docker-archive and an oci-archive, with a config to inherit."""
    out = tmp_path_factory.mktemp("archives")
    container = buildah(buildah_storage, "from", "--quiet", "scratch")
    try:
        buildah(buildah_storage, "add", "--quiet", container, str(busybox_rootfs), "/")
        buildah(
            buildah_storage, "config", "--env", "BASE_VAR=from-base", "--cmd", '["/bin/sh"]',
            "--workingdir", "/root", "--label", "base.label=yes", "--port", "8080/tcp", container,
        )  # fmt: skip
        image = buildah(buildah_storage, "commit", "--quiet", container)
    finally:
        buildah(buildah_storage, "rm", container)
    archives = {
        "docker": out / "busybox.docker.tar",
        "oci": out / "busybox.oci.tar",
    }
    buildah(buildah_storage, "push", "--quiet", image, f"docker-archive:{archives['docker']}:busybox:latest")
    buildah(buildah_storage, "push", "--quiet", image, f"oci-archive:{archives['oci']}:busybox:latest")
    buildah(buildah_storage, "rmi", image)
    return archives


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real docker-registry on 127.0.0.1 and a free port; yields HOST:PORT."""
    require_tools("docker-registry")
    base = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: dualbuild-tests\n"
    )
    log = (base / "registry.log").open("wb")
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    if not wait_until_listening(port, process):
        process.kill()
        process.wait()
        pytest.fail(f"docker-registry did not start:\n{(base / 'registry.log').read_text()[-3000:]}")
    yield address
    process.terminate()
    process.wait(timeout=HANG_SECONDS)
    log.close()


@pytest.fixture(scope="session")
def signing_home() -> Iterator[tuple[Path, str]]:
    """A throwaway GNUPGHOME with an RSA key (2048 bits: fast to make, still what rkt verifies)."""
    require_tools("gpg", "gpgconf")
    home = Path(tempfile.mkdtemp(prefix="dbs-", dir="/tmp"))
    home.chmod(0o700)
    env = gpg_env(home)
    user_id = "dualbuild tests <tests@dualbuild.invalid>"
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-generate-key", user_id, "rsa2048", "sign", "0"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-secret-keys"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    yield home, fingerprint
    stop_agent(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def cli_env(
    buildah_storage: StorageOptions, signing_home: tuple[Path, str], tmp_path: Path
) -> dict[str, str]:
    """The environment of a `dualbuild` child: the test buildah store, the test keyring and key."""
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{buildah_storage.root}"\n'
        f'runroot = "{buildah_storage.runroot}"\n'
    )
    home, fingerprint = signing_home
    return {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(conf),
        "GNUPGHOME": str(home),
        "DUALBUILD_SIGN_KEY": fingerprint,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


@pytest.fixture
def project(tmp_path: Path, busybox_rootfs: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    shutil.copy(busybox_rootfs, directory / "busybox.tar")
    (directory / "greeting.txt").write_text("hello from the context\n")
    return directory


# --- a private Docker engine ---------------------------------------------------------------


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """A private dockerd on its own socket, data root and exec root; stopped at the end."""
    require_tools("dockerd", "docker")
    require_root()
    # Short path: the socket path must stay under the 108-byte unix socket limit.
    base = Path(tempfile.mkdtemp(prefix="dbd-", dir="/tmp"))
    sock = f"unix://{base}/docker.sock"
    log = (base / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", f"{base}/data", "--exec-root", f"{base}/exec",
         "--pidfile", f"{base}/docker.pid", "-H", sock, "--iptables=false", "--bridge=none"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", sock, *args], check=check, capture_output=True, text=True, timeout=HANG_SECONDS
        )

    try:
        deadline = time.monotonic() + HANG_SECONDS
        while run("info", check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{(base / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.1)
        yield run
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=HANG_SECONDS)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


# --- in-process builds ---------------------------------------------------------------------


@pytest.fixture
def builder(buildah_storage: StorageOptions, tmp_path_factory: pytest.TempPathFactory) -> Builder:
    """Builds recipes in this process, against the test store, with a cache of the session's."""
    return Builder(buildah_storage, tmp_path_factory.getbasetemp() / "cache" / "dualbuild")


@pytest.fixture
def context(tmp_path: Path, busybox_rootfs: Path) -> Path:
    """A build context holding busybox.tar (a busybox rootfs)."""
    shutil.copy(busybox_rootfs, tmp_path / "busybox.tar")
    return tmp_path
