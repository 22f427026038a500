"""`dualbuild publish` against real components: docker-registry, skopeo, gpg, actool, HTTP servers.

Every server runs on 127.0.0.1 and a free port and is stopped by its fixture.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from dualbuild.builder.storage import StorageOptions
from dualbuild.errors import PublishError
from dualbuild.gpg import gpg_env, stop_agent
from dualbuild.publish.flow import publish
from dualbuild.publish.retry import RetryPolicy
from dualbuild.publish.types import PublishRequest
from tests.support import HANG_SECONDS, free_port, require_tools, wait_until_listening

DUALBUILD = str(Path(sys.executable).parent / "dualbuild")
# Runs the CLI with `publish` registered, whether or not cli.py does it already.
CLI = (
    "import sys\n"
    "from dualbuild.cli.main import cli\n"
    "from dualbuild.cli.publish import publish_command\n"
    "if 'publish' not in cli.commands:\n"
    "    cli.add_command(publish_command)\n"
    "cli(sys.argv[1:], prog_name='dualbuild')\n"
)
PASSWORD = "pw-Secret-7f3a9c"
FAST = RetryPolicy(attempts=4, first_delay=0.05, max_delay=0.2)


# --- fixtures: a key, two builds, servers --------------------------------------------------------

RECIPE = """
[image]
name = "localhost/hello"
version = "1.0.0"
tags = ["latest", "1.0"]
arch = "arm64"

[[stages]]
name = "final"
from = "rootfs:busybox.tar"
  [[stages.steps]]
  write = "/etc/greeting"
  content = "GREETING\\n"

[app]
entrypoint = ["/bin/cat", "/etc/greeting"]

[output]
formats = ["docker", "aci"]
source_date_epoch = 1700000000
"""


@dataclass(frozen=True)
class Build:
    """A built project: recipe.toml and dist/ (copied per test, since publish edits the report)."""

    directory: Path
    report: dict[str, object]

    def artifact(self, fmt: str, key: str) -> str:
        artifacts = self.report["artifacts"]
        assert isinstance(artifacts, dict)
        return str(artifacts[fmt][key])

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.directory, dest, ignore=shutil.ignore_patterns("busybox.tar"))
        return dest / "recipe.toml"


@pytest.fixture(scope="module")
def signing_key(signing_home: tuple[Path, str]) -> tuple[Path, str]:
    """The session's throwaway GNUPGHOME and RSA key (conftest.signing_home)."""
    return signing_home


@pytest.fixture(scope="module")
def builds(
    tmp_path_factory: pytest.TempPathFactory,
    buildah_storage: StorageOptions,
    busybox_rootfs: Path,
    signing_key: tuple[Path, str],
) -> dict[str, Build]:
    """Two real builds of the same name and version: "a", and "b" with other file content."""
    require_tools("skopeo", "actool")
    base = tmp_path_factory.mktemp("builds")
    conf = base / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{buildah_storage.root}"\n'
        f'runroot = "{buildah_storage.runroot}"\n'
    )
    env = {
        **os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "GNUPGHOME": str(signing_key[0]),
        "DUALBUILD_SIGN_KEY": signing_key[1], "XDG_CACHE_HOME": str(base / "cache"),
    }  # fmt: skip
    result = {}
    for label, greeting in (("a", "hello"), ("b", "changed")):
        directory = base / label
        directory.mkdir()
        shutil.copy(busybox_rootfs, directory / "busybox.tar")
        (directory / "recipe.toml").write_text(RECIPE.replace("GREETING", greeting))
        built = subprocess.run(
            [DUALBUILD, "build", str(directory / "recipe.toml"), "--json"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        result[label] = Build(directory, json.loads(built.stdout))
    assert result["a"].artifact("docker", "image_id") != result["b"].artifact("docker", "image_id")
    return result


@pytest.fixture
def env(signing_key: tuple[Path, str]) -> dict[str, str]:
    """The environment of a `dualbuild publish` child: the test keyring, no site credentials."""
    cleaned = {k: v for k, v in os.environ.items() if not k.startswith("DUALBUILD_")}
    return {**cleaned, "GNUPGHOME": str(signing_key[0])}


def dualbuild_publish(
    args: list[str], env: dict[str, str], *, verbose: bool = False
) -> subprocess.CompletedProcess[str]:
    options = ["-vv"] if verbose else []
    return subprocess.run(
        [sys.executable, "-c", CLI, *options, "publish", *args], env=env, capture_output=True, text=True,
        timeout=HANG_SECONDS, check=False,
    )  # fmt: skip


def remote(reference: str) -> tuple[str, str] | None:
    """(manifest digest, config digest) of a registry reference, read with skopeo; None if absent."""
    result = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        assert b"manifest unknown" in result.stderr, result.stderr
        return None
    return "sha256:" + hashlib.sha256(result.stdout).hexdigest(), json.loads(result.stdout)["config"][
        "digest"
    ]


@dataclass
class SiteServer:
    """A web server over a directory; with ``writable`` it takes authenticated PUT and DELETE.

    ``faults`` are (method, path fragment, "503" | "reset"), each used once, in order, on the
    first matching request; ``broken`` answers 503 to every matching request.
    """

    root: Path
    writable: bool = False
    credentials: tuple[str, str] | None = None
    faults: list[tuple[str, str, str]] = field(default_factory=list)
    broken: tuple[str, str] | None = None
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> SiteServer:
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(site.root), **kwargs)  # type: ignore[arg-type]

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _fault(self) -> str | None:
                if site.broken and self.command == site.broken[0] and site.broken[1] in self.path:
                    return "503"
                for index, (method, fragment, action) in enumerate(site.faults):
                    if method == self.command and fragment in self.path:
                        del site.faults[index]
                        return action
                return None

            def _answer(self, status: int, action: str = "ok") -> None:
                site.requests.append((self.command, self.path, action if action != "ok" else str(status)))
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="site"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _write_request(self) -> bool:
                fault = self._fault()
                if fault == "reset":
                    site.requests.append((self.command, self.path, "reset"))
                    # SO_LINGER 0: close() sends a RST, as a crashing proxy would.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return False
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if fault == "503":
                    self._answer(503, "503")
                    return False
                if not site.writable:
                    self._answer(405)
                    return False
                expected = "Basic " + base64.b64encode(":".join(site.credentials or ()).encode()).decode()
                if site.credentials and self.headers.get("Authorization") != expected:
                    self._answer(401)
                    return False
                self._body = body
                return True

            def do_PUT(self) -> None:
                if not self._write_request():
                    return
                target = site.root / self.path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self._body)
                self._answer(201)

            def do_DELETE(self) -> None:
                if not self._write_request():
                    return
                target = site.root / self.path.lstrip("/")
                if not target.is_file():
                    self._answer(404)
                    return
                target.unlink()
                self._answer(204)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the deliberate resets end handlers with socket errors

        self._server = Server(("127.0.0.1", self.port or free_port()), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def site_server() -> Iterator[Callable[..., SiteServer]]:
    started: list[SiteServer] = []

    def start(root: Path, **options: object) -> SiteServer:
        server = SiteServer(root, **options).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class FlakyProxy:
    """A TCP proxy to a registry whose first plain-HTTP connections fail ("503" or "reset").

    TLS connections (skopeo tries https first) are passed through untouched, so the failures
    land on the HTTP requests the push really makes.
    """

    def __init__(self, target: str, failures: list[str]) -> None:
        host, port = target.split(":")
        self.target = (host, int(port))
        self.failures = list(failures)
        self.failed: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            first = client.recv(1, socket.MSG_PEEK)
            if self.failures and first and first != b"\x16":
                action = self.failures.pop(0)
                self.failed.append(action)
                if action == "503":
                    client.recv(65536)
                    client.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                else:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, dest: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                dest.sendall(data)
            dest.shutdown(socket.SHUT_WR)
        except OSError:
            return

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def dualbuild_log() -> Iterator[list[str]]:
    """The messages dualbuild logs during the test (its logger does not propagate after setup)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("dualbuild")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(previous)


def discover(port: int, name: str) -> dict[str, list[object]]:
    result = subprocess.run(
        ["actool", "discover", "--insecure", "--port", str(port), "--json", name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert isinstance(found, dict)
    return found


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
    return data


# What a bare name asks for (appc discovery's default version), then the version and each tag.
EVERY_VERSION = (None, "1.0.0", "latest", "1.0")


def assert_discovered_and_verified(
    port: int, build: Build, fingerprint: str, tmp_path: Path, version: str | None = "1.0.0"
) -> None:
    """actool finds the ACI, its signature and key; the fetched bytes verify with the fetched key.

    ``version`` None discovers the bare name, which appc resolves as version ``latest``.
    """
    asked = f":{version}" if version is not None else ""
    found = discover(port, f"localhost/hello{asked},os=linux,arch=aarch64")
    endpoints = found["ACIEndpoints"]
    assert len(endpoints) == 1
    endpoint = endpoints[0]
    assert isinstance(endpoint, dict)
    assert endpoint["ACI"] == (
        f"http://localhost:{port}/images/localhost/hello-{version or 'latest'}-linux-aarch64.aci"
    )
    assert endpoint["ASC"] == endpoint["ACI"] + ".asc"
    assert found["PublicKeys"] == [f"http://localhost:{port}/pubkeys/{fingerprint}.asc"]
    aci = fetch(str(endpoint["ACI"]))
    assert aci == Path(build.artifact("aci", "file")).read_bytes()
    fetched = tmp_path / "fetched"
    fetched.mkdir(parents=True)
    (fetched / "image.aci").write_bytes(aci)
    (fetched / "image.aci.asc").write_bytes(fetch(str(endpoint["ASC"])))
    key = fetch(str(found["PublicKeys"][0]))
    assert key.count(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") == 1
    (fetched / "key.asc").write_bytes(key)
    home = Path(tempfile.mkdtemp(prefix="dbv-", dir="/tmp"))
    home.chmod(0o700)
    try:
        subprocess.run(
            ["gpg", "--batch", "--import", str(fetched / "key.asc")], env=gpg_env(home), check=True,
            capture_output=True,
        )  # fmt: skip
        verify = subprocess.run(
            ["gpg", "--batch", "--status-fd", "1", "--verify", str(fetched / "image.aci.asc"),
             str(fetched / "image.aci")],
            env=gpg_env(home), capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        stop_agent(home)
        shutil.rmtree(home, ignore_errors=True)
    assert verify.returncode == 0, verify.stderr
    assert f"VALIDSIG {fingerprint}" in verify.stdout


def assert_every_version_discovered(port: int, build: Build, fingerprint: str, tmp_path: Path) -> None:
    for version in EVERY_VERSION:
        assert_discovered_and_verified(port, build, fingerprint, tmp_path / (version or "bare"), version)


# --- Docker registry -----------------------------------------------------------------------------


def test_push_every_tag_check_digests_republish_and_refuse_changed_bytes(
    builds: dict[str, Build], registry: str, env: dict[str, str], tmp_path: Path
) -> None:
    repo = f"{registry}/pub/every-tag"
    recipe = builds["a"].copy(tmp_path / "a")
    image_id = builds["a"].artifact("docker", "image_id")
    first = dualbuild_publish([str(recipe), "--docker", repo, "--no-tls-verify"], env)
    assert first.returncode == 0, first.stderr
    reference = first.stdout.split()[0]
    assert reference.startswith(f"{repo}@sha256:")
    digest = reference.split("@", 1)[1]
    for tag in ("1.0.0", "latest", "1.0"):
        assert remote(f"{repo}:{tag}") == (digest, image_id), tag
    report = json.loads((tmp_path / "a/dist/hello-1.0.0-linux-arm64.report.json").read_text())
    assert report["published"]["docker"]["reference"] == reference
    assert report["published"]["docker"]["tags"] == ["1.0.0", "latest", "1.0"]

    again = dualbuild_publish([str(recipe), "--docker", repo, "--no-tls-verify"], env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[0] == reference
    assert "unchanged" in again.stdout
    assert "nothing pushed" in again.stderr

    # Same name and version, other bytes: refused before anything moves, even the tags.
    changed = builds["b"].copy(tmp_path / "b")
    refused = dualbuild_publish([str(changed), "--docker", repo, "--no-tls-verify"], env)
    assert refused.returncode == 5, refused.stderr
    assert f"{repo}:1.0.0 already holds a different image ({image_id}" in refused.stderr
    assert "--force" in refused.stderr
    assert "published: nothing" in refused.stderr
    for tag in ("1.0.0", "latest", "1.0"):
        assert remote(f"{repo}:{tag}") == (digest, image_id), tag

    forced = dualbuild_publish([str(changed), "--docker", repo, "--no-tls-verify", "--force"], env)
    assert forced.returncode == 0, forced.stderr
    new_digest = forced.stdout.split()[0].split("@", 1)[1]
    assert new_digest != digest
    for tag in ("1.0.0", "latest", "1.0"):
        assert remote(f"{repo}:{tag}") == (new_digest, builds["b"].artifact("docker", "image_id")), tag


def test_registry_down_fails_clearly_and_claims_nothing(
    builds: dict[str, Build], env: dict[str, str], tmp_path: Path
) -> None:
    recipe = builds["a"].copy(tmp_path / "a")
    report = tmp_path / "a/dist/hello-1.0.0-linux-arm64.report.json"
    before = report.read_bytes()
    down = f"127.0.0.1:{free_port()}"
    result = dualbuild_publish(
        [str(recipe), "--docker", f"{down}/pub/hello", "--no-tls-verify", "--aci", str(tmp_path / "site")],
        env,
    )
    assert result.returncode == 5, result.stderr
    assert f"error: cannot read {down}/pub/hello:1.0.0 from the registry" in result.stderr
    assert "connection refused" in result.stderr
    assert "retry 3 of 3" in result.stderr  # retried, a bounded number of times
    assert "published: nothing" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert report.read_bytes() == before
    assert not (tmp_path / "site").exists()


def test_transient_registry_failures_are_retried(
    builds: dict[str, Build], registry: str, signing_key: tuple[Path, str], tmp_path: Path,
    dualbuild_log: list[str],
) -> None:  # fmt: skip
    recipe = builds["a"].copy(tmp_path / "a")
    proxy = FlakyProxy(registry, ["503", "reset", "503"])
    try:
        result = publish(
            PublishRequest(
                recipe=recipe,
                docker=f"127.0.0.1:{proxy.port}/pub/flaky",
                tls_verify=False,
                retry=FAST,
                environ={**os.environ, "GNUPGHOME": str(signing_key[0])},
            )
        )
    finally:
        proxy.close()
    assert proxy.failed == ["503", "reset", "503"]
    assert any("retry 1 of 3" in message for message in dualbuild_log), dualbuild_log
    assert result.docker is not None
    assert remote(f"{registry}/pub/flaky:latest") == (
        result.docker.record.digest,
        builds["a"].artifact("docker", "image_id"),
    )


@pytest.fixture
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry that wants a password (htpasswd, bcrypt with few rounds: fast)."""
    require_tools("docker-registry")
    base = tmp_path_factory.mktemp("auth-registry")
    (base / "htpasswd").write_text(
        f"tester:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
    )
    port = free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: dualbuild-tests\n"
        f"auth:\n  htpasswd:\n    realm: tests\n    path: {base / 'htpasswd'}\n"
    )
    with (base / "registry.log").open("wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
        try:
            if not wait_until_listening(port, process):
                pytest.fail(f"docker-registry did not start:\n{(base / 'registry.log').read_text()[-3000:]}")
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=HANG_SECONDS)


def test_registry_credentials_come_from_the_authfile_and_are_never_shown(
    builds: dict[str, Build], auth_registry: str, env: dict[str, str], tmp_path: Path
) -> None:
    recipe = builds["a"].copy(tmp_path / "a")
    repo = f"{auth_registry}/pub/private"
    anonymous = dualbuild_publish([str(recipe), "--docker", repo, "--no-tls-verify"], env)
    assert anonymous.returncode == 5
    assert "authentication required" in anonymous.stderr
    assert "retry" not in anonymous.stderr  # an auth failure is not transient
    authfile = tmp_path / "auth.json"
    token = base64.b64encode(f"tester:{PASSWORD}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {auth_registry: {"auth": token}}}))
    # -vv logs every command run: the authfile's path may show, never what is in it.
    result = dualbuild_publish(
        [str(recipe), "--docker", repo, "--no-tls-verify", "--authfile", str(authfile)], env, verbose=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{repo}@sha256:")
    assert "+ /usr/bin/skopeo --command-timeout 1800s copy --authfile" in result.stderr
    report = (tmp_path / "a/dist/hello-1.0.0-linux-arm64.report.json").read_text()
    for text in (anonymous.stdout, anonymous.stderr, result.stdout, result.stderr, report):
        assert PASSWORD not in text
        assert token not in text


# --- ACI discovery site ----------------------------------------------------------------------------


def test_aci_site_in_a_directory_is_discovered_and_verifies(
    builds: dict[str, Build], env: dict[str, str], tmp_path: Path, signing_key: tuple[Path, str],
    site_server: Callable[..., SiteServer],
) -> None:  # fmt: skip
    site = tmp_path / "site"
    (site / "hello").mkdir(parents=True)
    existing = (
        "<html><head><title>Hello images</title>\n"
        '<meta name="description" content="keep me">\n'
        '<meta name="ac-discovery" content="localhost/other https://mirror.example/{name}.{ext}">\n'
        "</head><body><p>Our images live here.</p></body></html>\n"
    )
    (site / "hello/index.html").write_text(existing)
    server = site_server(site)
    recipe = builds["a"].copy(tmp_path / "a")
    args = [str(recipe), "--aci", str(site), "--aci-url", f"http://localhost:{server.port}"]
    result = dualbuild_publish(args, env)
    assert result.returncode == 0, result.stderr
    fingerprint = signing_key[1]
    assert result.stdout.splitlines()[0] == (
        f"http://localhost:{server.port}/images/localhost/hello-1.0.0-linux-aarch64.aci  (written)"
    )
    page = (site / "hello/index.html").read_text()
    assert "<p>Our images live here.</p>" in page
    assert '<meta name="description" content="keep me">' in page
    assert "localhost/other https://mirror.example/{name}.{ext}" in page
    for path in site.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    # Each tag's ACI and signature are relative links to the version's: no second copy.
    images = site / "images/localhost"
    for tag in ("latest", "1.0"):
        for ext in ("aci", "aci.asc"):
            link = os.readlink(images / f"hello-{tag}-linux-aarch64.{ext}")
            assert link == f"hello-1.0.0-linux-aarch64.{ext}"
    assert not (images / "hello-1.0.0-linux-aarch64.aci").is_symlink()
    assert_every_version_discovered(server.port, builds["a"], fingerprint, tmp_path)
    report = json.loads((tmp_path / "a/dist/hello-1.0.0-linux-arm64.report.json").read_text())
    assert report["published"]["aci"]["signing_key"] == fingerprint
    assert report["published"]["aci"]["discovery_name"] == "localhost/hello:1.0.0,os=linux,arch=aarch64"
    assert report["published"]["aci"]["tags"] == ["1.0.0", "latest", "1.0"]

    # Publishing the same bytes again writes nothing.
    stamps = {path: path.lstat().st_mtime_ns for path in site.rglob("*") if path.is_file()}
    again = dualbuild_publish(args, env)
    assert again.returncode == 0, again.stderr
    assert "(unchanged)" in again.stdout
    assert {path: path.lstat().st_mtime_ns for path in site.rglob("*") if path.is_file()} == stamps

    # Other bytes under the same version are refused; the site stays as it was.
    changed = builds["b"].copy(tmp_path / "b")
    refused = dualbuild_publish([str(changed), *args[1:]], env)
    assert refused.returncode == 5
    assert "already holds a different ACI" in refused.stderr
    assert {path: path.lstat().st_mtime_ns for path in site.rglob("*") if path.is_file()} == stamps

    # --force replaces the ACI and its signature; the key and the page are already right.
    forced = dualbuild_publish([str(changed), *args[1:], "--force"], env)
    assert forced.returncode == 0, forced.stderr
    aci = site / "images/localhost/hello-1.0.0-linux-aarch64.aci"
    assert aci.read_bytes() == Path(builds["b"].artifact("aci", "file")).read_bytes()
    assert (site / "hello/index.html").read_text() == page
    # The tags are links to the version: they follow it, each ACI with its own signature.
    assert_every_version_discovered(server.port, builds["b"], fingerprint, tmp_path / "b-fetched")


def test_aci_site_over_http_put_with_credentials_retries_and_only_a_public_key(
    builds: dict[str, Build], signing_key: tuple[Path, str], tmp_path: Path,
    site_server: Callable[..., SiteServer],
) -> None:  # fmt: skip
    fingerprint = signing_key[1]
    # Publishing from a machine without the secret key: an empty keyring, the exported public key.
    public = tmp_path / "public.asc"
    public.write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--armor", "--export", fingerprint],
            env=gpg_env(signing_key[0]),
            check=True,
            capture_output=True,
        ).stdout
    )
    empty_home = Path(tempfile.mkdtemp(prefix="dbe-", dir="/tmp"))
    empty_home.chmod(0o700)
    site = tmp_path / "site"
    site.mkdir()
    server = site_server(site, writable=True, credentials=("publisher", PASSWORD))
    recipe = builds["a"].copy(tmp_path / "a")
    args = [str(recipe), "--aci", server.url, "--aci-url", f"http://localhost:{server.port}"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DUALBUILD_")},
        "GNUPGHOME": str(empty_home), "NETRC": str(tmp_path / "no-netrc"),
    }  # fmt: skip
    try:
        without_key = dualbuild_publish(args, {**env, "DUALBUILD_ACI_USER": "publisher",
                                                "DUALBUILD_ACI_PASSWORD": PASSWORD})  # fmt: skip
        assert without_key.returncode == 5
        assert f"the signing key {fingerprint} is not in the keyring" in without_key.stderr
        assert "--public-key" in without_key.stderr

        anonymous = dualbuild_publish([*args, "--public-key", str(public)], env)
        assert anonymous.returncode == 5
        assert "HTTP 401" in anonymous.stderr
        assert "DUALBUILD_ACI_USER" in anonymous.stderr
        assert not [p for p in site.rglob("*") if p.is_file()]

        # Credentials from a netrc file this time.
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login publisher password {PASSWORD}\n")
        server.requests.clear()
        server.faults = [
            ("PUT", "/pubkeys/", "503"),
            ("PUT", ".aci.asc", "reset"),
            ("PUT", "index.html", "503"),
        ]
        result = dualbuild_publish([*args, "--public-key", str(public)], {**env, "NETRC": str(netrc)})
    finally:
        stop_agent(empty_home)
        shutil.rmtree(empty_home, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    failures = [(method, action) for method, _path, action in server.requests if action in ("503", "reset")]
    assert failures == [("PUT", "503"), ("PUT", "reset"), ("PUT", "503")]
    assert result.stderr.count("retry 1 of 3") == 3
    written = [path for method, path, status in server.requests if method == "PUT" and status == "201"]
    # Files first (the version, then a copy per tag: PUT cannot link; each signature before its
    # ACI), the page last.
    assert written == [
        f"/pubkeys/{fingerprint}.asc",
        "/images/localhost/hello-1.0.0-linux-aarch64.aci.asc",
        "/images/localhost/hello-1.0.0-linux-aarch64.aci",
        "/images/localhost/hello-latest-linux-aarch64.aci.asc",
        "/images/localhost/hello-latest-linux-aarch64.aci",
        "/images/localhost/hello-1.0-linux-aarch64.aci.asc",
        "/images/localhost/hello-1.0-linux-aarch64.aci",
        "/hello/index.html",
    ]
    assert_every_version_discovered(server.port, builds["a"], fingerprint, tmp_path)
    report = (tmp_path / "a/dist/hello-1.0.0-linux-arm64.report.json").read_text()
    token = base64.b64encode(f"publisher:{PASSWORD}".encode()).decode()
    for text in (without_key.stderr, anonymous.stderr, result.stdout, result.stderr, report):
        assert PASSWORD not in text
        assert token not in text


def test_failed_page_write_rolls_the_site_back_and_says_what_was_published(
    builds: dict[str, Build], registry: str, signing_key: tuple[Path, str], tmp_path: Path,
    site_server: Callable[..., SiteServer],
) -> None:  # fmt: skip
    site = tmp_path / "site"
    site.mkdir()
    server = site_server(site, writable=True, broken=("PUT", "index.html"))
    recipe = builds["a"].copy(tmp_path / "a")
    repo = f"{registry}/pub/rollback"
    request = PublishRequest(
        recipe=recipe, docker=repo, aci=server.url, aci_url=f"http://localhost:{server.port}",
        tls_verify=False, retry=FAST, environ={**os.environ, "GNUPGHOME": str(signing_key[0])},
    )  # fmt: skip
    with pytest.raises(PublishError) as caught:
        publish(request)
    message = str(caught.value)
    assert caught.value.exit_code == 5
    assert "writing hello/index.html to" in message
    assert "HTTP 503" in message
    assert f"published: Docker image {repo}@sha256:" in message
    assert "not published: the ACI localhost/hello:1.0.0,os=linux,arch=aarch64 (site rolled back" in message
    # No page, and nothing this run added is left for a page to point at.
    assert not [p for p in site.rglob("*") if p.is_file()]
    assert [method for method, _path, status in server.requests if status == "204"] == ["DELETE"] * 7
    puts = [status for method, path, status in server.requests if method == "PUT" and "index.html" in path]
    assert puts == ["503"] * FAST.attempts
    report = json.loads((tmp_path / "a/dist/hello-1.0.0-linux-arm64.report.json").read_text())
    assert set(report["published"]) == {"docker"}

    # A site that has version 1.0.0 already: --force replaces the ACI, the page must change
    # (another aci-url) and fails; the rollback puts the earlier ACI and signature back.
    server.broken = None
    publish(dataclasses.replace(request, docker=None))
    before = {path: path.read_bytes() for path in site.rglob("*") if path.is_file()}
    server.broken = ("PUT", "index.html")
    changed = builds["b"].copy(tmp_path / "b")
    forced = dataclasses.replace(
        request, recipe=changed, docker=None, aci_url=f"http://127.0.0.1:{server.port}", force=True
    )
    with pytest.raises(PublishError) as caught:
        publish(forced)
    assert "restored images/localhost/hello-1.0.0-linux-aarch64.aci" in str(caught.value)
    assert {path: path.read_bytes() for path in site.rglob("*") if path.is_file()} == before


def test_dry_run_writes_nothing(
    builds: dict[str, Build], registry: str, env: dict[str, str], tmp_path: Path
) -> None:
    recipe = builds["a"].copy(tmp_path / "a")
    repo = f"{registry}/pub/dry"
    site = tmp_path / "site"
    result = dualbuild_publish(
        [str(recipe), "--docker", repo, "--no-tls-verify", "--aci", str(site), "--dry-run"], env
    )
    assert result.returncode == 0, result.stderr
    assert f"would push hello-1.0.0-linux-arm64.docker.tar to {repo}:1.0.0" in result.stdout
    assert f"would add {site}/images/localhost/hello-1.0.0-linux-aarch64.aci" in result.stdout
    assert f"would add {site}/hello/index.html" in result.stdout
    assert (
        f"would add {site}/images/localhost/hello-latest-linux-aarch64.aci"
        " (a link to hello-1.0.0-linux-aarch64.aci)" in result.stdout
    )
    assert remote(f"{repo}:1.0.0") is None
    assert not site.exists()


def test_a_changed_recipe_or_missing_build_is_refused(
    builds: dict[str, Build], env: dict[str, str], tmp_path: Path
) -> None:
    recipe = builds["a"].copy(tmp_path / "a")
    with recipe.open("a") as handle:
        handle.write("# edited after the build\n")
    result = dualbuild_publish([str(recipe), "--aci", str(tmp_path / "site")], env)
    assert result.returncode == 5
    assert "changed since the build" in result.stderr
    assert "rebuild first" in result.stderr
    missing = dualbuild_publish(
        [str(recipe), "--aci", str(tmp_path / "site"), "--out", str(tmp_path / "x")], env
    )
    assert missing.returncode == 5
    assert "no build of" in missing.stderr
    nowhere = dualbuild_publish([str(recipe)], env)
    assert nowhere.returncode == 2
    assert "nothing to publish to" in nowhere.stderr
    assert not (tmp_path / "site").exists()
