"""Real clients read what the emitters write: actool, docker load + run, podman, skopeo; memory stays flat."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbuild.emit import run_emitters
from dualbuild.emit.aci import emit_aci
from dualbuild.emit.artifact import ImageSpec
from dualbuild.emit.docker import emit_docker
from dualbuild.emit.oci import emit_oci
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tree import EntryType, Tree, decode_name, snapshot
from dualbuild.recipe.model import Format, Image
from tests.integration.helpers import Docker
from tests.support import (
    CAPABILITY,
    LONG_PATH,
    NON_UTF8,
    ROOT,
    SDE,
    build_rich_tree,
    extract_trusted,
    require_root,
    require_tools,
)
from tests.unit.test_emit import CONFIG, IMAGE, aci_manifest_of, emit_all


@pytest.fixture
def rich_tree(tmp_path: Path) -> Tree:
    return snapshot(build_rich_tree(tmp_path / "root", privileged=os.geteuid() == 0), SDE)


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox root filesystem of scripts/busybox_rootfs.py, extracted to a directory."""
    require_root()  # the rootfs holds files owned by 0:0 that must stay so
    base = tmp_path_factory.mktemp("busybox")
    archive = base / "rootfs.tar"
    subprocess.run([sys.executable, str(ROOT / "scripts/busybox_rootfs.py"), str(archive)], check=True)
    root = base / "root"
    root.mkdir()
    with tarfile.open(archive) as tar:
        extract_trusted(tar, root)
    return root


class PodmanStore:
    """podman against a store of its own (root, runroot, libpod tmpdir), removed afterwards.

    vfs and no events: nothing is mounted, and nothing is written outside the store's folder.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.argv = [
            "podman", "--root", f"{base}/root", "--runroot", f"{base}/run", "--tmpdir", f"{base}/tmp",
            "--storage-driver", "vfs", "--events-backend", "none",
        ]  # fmt: skip

    def load(self, archive: Path) -> list[str]:
        """`podman load -i ARCHIVE`; the names it says it loaded, sorted."""
        env = {**os.environ, "TMPDIR": str(self.base)}  # where podman load unpacks the archive
        loaded = subprocess.run(
            [*self.argv, "load", "-i", str(archive)], capture_output=True, text=True, env=env
        )
        assert loaded.returncode == 0, loaded.stderr
        prefix = "Loaded image: "
        return sorted(
            line.removeprefix(prefix) for line in loaded.stdout.splitlines() if line.startswith(prefix)
        )

    def images(self) -> list[str]:
        """``NAME:TAG SHORT-ID`` of every image in the store, sorted."""
        listed = subprocess.run(
            [*self.argv, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return sorted(listed.stdout.splitlines())


@pytest.fixture
def podman() -> Iterator[PodmanStore]:
    require_tools("podman")
    require_root()
    store = PodmanStore(Path(tempfile.mkdtemp(prefix="dbp-", dir="/tmp")))
    try:
        yield store
    finally:
        subprocess.run([*store.argv, "rmi", "--all", "--force"], capture_output=True, check=False)
        shutil.rmtree(store.base, ignore_errors=True)


def test_podman_loads_every_tag_of_the_docker_tarball(
    rich_tree: Tree, podman: PodmanStore, tmp_path: Path
) -> None:
    spec = ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE)
    artifact = emit_docker(rich_tree, spec, tmp_path / "hello.docker.tar")
    names = ["example.com/team/hello:1.2", "example.com/team/hello:1.2.3", "example.com/team/hello:latest"]
    assert podman.load(artifact.path) == names
    image_id = artifact.image_id.removeprefix("sha256:")[:12]
    assert podman.images() == [f"{name} {image_id}" for name in names]


def test_podman_names_the_oci_archive_after_the_image(
    rich_tree: Tree, podman: PodmanStore, tmp_path: Path
) -> None:
    """Not `localhost/1.2.3:latest`: podman names an OCI archive after io.containerd.image.name."""
    spec = ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE)
    artifact = emit_oci(rich_tree, spec, tmp_path / "hello.oci.tar")
    assert podman.load(artifact.path) == ["example.com/team/hello:1.2.3"]
    image_id = artifact.image_id.removeprefix("sha256:")[:12]
    assert podman.images() == [f"example.com/team/hello:1.2.3 {image_id}"]


def test_actool_validates_the_aci(rich_tree: Tree, tmp_path: Path) -> None:
    require_tools("actool")
    artifact = emit_aci(
        rich_tree,
        ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE),
        tmp_path / "hello-1.2.3-linux-armv7.aci",
    )
    result = subprocess.run(
        ["actool", "--debug", "validate", str(artifact.path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "valid app container image" in result.stderr
    shown = subprocess.run(
        ["actool", "cat-manifest", str(artifact.path)], capture_output=True, text=True, check=True
    )
    assert json.loads(shown.stdout)["app"]["user"] == "1000"


def test_actool_rejects_a_broken_aci(tmp_path: Path) -> None:
    """The validation above can fail: a manifest actool refuses (uppercase name) is caught."""
    require_tools("actool")
    root = tmp_path / "root"
    root.mkdir()
    spec = ImageSpec(
        image=Image(name="Example.com/X", version="1"), config=ImageConfig(), source_date_epoch=SDE
    )
    artifact = emit_aci(snapshot(root, SDE), spec, tmp_path / "x.aci")
    result = subprocess.run(["actool", "validate", str(artifact.path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ACIdentifier" in result.stderr


def test_docker_loads_and_runs_the_busybox_image(busybox_root: Path, docker: Docker, tmp_path: Path) -> None:
    tree = snapshot(busybox_root, SDE)
    image = Image(name="dualbuild-test/busybox", version="1.0.0", tags=("latest",))
    config = ImageConfig(
        entrypoint=("/bin/sh", "-c", 'echo "$GREETING from $(id -u):$(id -g) in $(pwd) $0 $1"'),
        cmd=("arg0", "arg1"),
        user="nobody",
        workdir="/tmp",
        env=(("GREETING", "hello"),),
    )
    targets = {Format.DOCKER: tmp_path / "bb.docker.tar", Format.ACI: tmp_path / "bb.aci"}
    docker_artifact, aci_artifact = run_emitters(
        tree, ImageSpec(image=image, config=config, source_date_epoch=SDE), targets
    )
    loaded = docker("load", "-i", str(docker_artifact.path))
    assert "Loaded image: dualbuild-test/busybox:1.0.0" in loaded.stdout
    assert "Loaded image: dualbuild-test/busybox:latest" in loaded.stdout
    inspected = docker("image", "inspect", "--format", "{{.Id}}", "dualbuild-test/busybox:1.0.0")
    assert inspected.stdout.strip() == docker_artifact.image_id
    ran = docker("run", "--rm", "--network", "none", "dualbuild-test/busybox:1.0.0")
    assert ran.stdout == "hello from 65534:65534 in /tmp arg0 arg1\n"
    # The ACI says the same: same ids resolved from the same /etc/passwd.
    app = aci_manifest_of(aci_artifact.path)["app"]
    assert isinstance(app, dict)
    assert (app["user"], app["group"]) == ("65534", "65534")
    if shutil.which("actool"):
        subprocess.run(["actool", "validate", str(aci_artifact.path)], check=True)


def test_docker_keeps_every_entry_kind(docker: Docker, tmp_path: Path) -> None:
    """Load the rich tree, then `docker export` a container of it: Docker extracted it faithfully."""
    tree = snapshot(build_rich_tree(tmp_path / "root", privileged=True), SDE)
    image = Image(name="dualbuild-test/rich", version="1")
    spec = ImageSpec(image=image, config=ImageConfig(entrypoint=("/bin/tool",)), source_date_epoch=SDE)
    artifact = emit_docker(tree, spec, tmp_path / "rich.docker.tar")
    docker("load", "-i", str(artifact.path))
    container = docker("create", "dualbuild-test/rich:1").stdout.strip()
    try:
        docker("export", "-o", str(tmp_path / "export.tar"), container)
    finally:
        docker("rm", container)
    with tarfile.open(tmp_path / "export.tar") as tar:
        exported = {member.name.rstrip("/"): member for member in tar.getmembers()}
    kinds = {
        EntryType.FILE: tarfile.REGTYPE,
        EntryType.DIR: tarfile.DIRTYPE,
        EntryType.SYMLINK: tarfile.SYMTYPE,
        EntryType.CHAR: tarfile.CHRTYPE,
        EntryType.FIFO: tarfile.FIFOTYPE,
    }
    for entry in tree.entries:
        member = exported[entry.path]
        # docker export writes modes with their file type bits (0o100644): compare permissions.
        owner = (stat.S_IMODE(member.mode), member.uid, member.gid)
        assert owner == (entry.mode, entry.uid, entry.gid), entry.path
        if entry.path in ("file", "hard"):
            continue  # the hardlink pair, checked below
        assert member.type == kinds[entry.type], entry.path
        if entry.type is EntryType.SYMLINK:
            assert member.linkname == entry.link_target, entry.path
        assert member.size == entry.size, entry.path
    # One name of the pair is the file, the other links to it (Docker's own walk picks which).
    pair = sorted((exported[name] for name in ("file", "hard")), key=lambda member: member.islnk())
    assert (pair[0].isfile(), pair[1].islnk(), pair[1].linkname) == (True, True, pair[0].name)
    capability = exported["bin/ping"].pax_headers.get("SCHILY.xattr.security.capability", "")
    assert capability.encode("utf-8", "surrogateescape") == CAPABILITY
    assert (exported["devices/null"].devmajor, exported["devices/null"].devminor) == (1, 3)
    assert stat.S_IMODE(exported["bin/suid"].mode) == 0o4755
    assert decode_name(NON_UTF8) in exported
    assert LONG_PATH in exported


def test_skopeo_reads_both_image_archives(rich_tree: Tree, tmp_path: Path) -> None:
    require_tools("skopeo")
    artifacts = emit_all(rich_tree, tmp_path / "out")
    docker_path, oci_path = artifacts[Format.DOCKER].path, artifacts[Format.OCI].path

    def skopeo(*args: str) -> str:
        return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout

    config = json.loads(skopeo("inspect", "--config", f"oci-archive:{oci_path}"))
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    assert config["rootfs"]["diff_ids"] == list(artifacts[Format.OCI].diff_ids)
    assert (config["architecture"], config["variant"]) == ("arm", "v7")
    # The OCI archive's one descriptor is also found by its bare tag (its ref.name).
    tagged = json.loads(skopeo("inspect", "--config", f"oci-archive:{oci_path}:1.2.3"))
    assert tagged == config
    inspected = json.loads(skopeo("inspect", f"docker-archive:{docker_path}"))
    assert inspected["Layers"] == list(artifacts[Format.DOCKER].diff_ids)
    assert inspected["Env"] == ["PATH=/usr/bin:/bin", "GREETING=hello=there"]
    # The Docker tarball is an OCI layout too, one descriptor per tag: each tag gives the raw
    # manifest we recorded; without a tag, containers/image asks which image is meant.
    for tag in ("1.2.3", "latest", "1.2"):
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci-archive:{docker_path}:{tag}"],
            check=True,
            capture_output=True,
        )
        assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == artifacts[Format.DOCKER].manifest_digest
    untagged = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci-archive:{docker_path}"], capture_output=True, text=True
    )
    assert untagged.returncode != 0
    assert "more than one image" in untagged.stderr


MEMORY_CHILD = """
import json, sys
from pathlib import Path
from dualbuild.emit import run_emitters
from dualbuild.emit.artifact import ImageSpec
from dualbuild.imageconfig import ImageConfig
from dualbuild.recipe.model import Format, Image
from dualbuild.layer.tree import snapshot
root, out = Path(sys.argv[1]), Path(sys.argv[2])
tree = snapshot(root, 1700000000)
targets = {
    Format.DOCKER: out / "big.docker.tar", Format.ACI: out / "big.aci", Format.OCI: out / "big.oci.tar"
}
image = Image(name="example.com/big", version="1")
spec = ImageSpec(image=image, config=ImageConfig(), source_date_epoch=1700000000)
artifacts = run_emitters(tree, spec, targets)
print(json.dumps([{"format": str(a.format), "size": a.size} for a in artifacts]))
"""
# The wrapper has exactly one child, so RUSAGE_CHILDREN is the emitter's peak alone.
MEMORY_WRAPPER = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
print(result.stdout, end="")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(result.returncode)
"""


def test_memory_stays_flat_for_a_2gb_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "sparse.img", "wb") as file:
        os.truncate(file.fileno(), 2 << 30)
    (root / "small").write_text("small")
    out = tmp_path / "out"
    out.mkdir()
    try:
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_WRAPPER, sys.executable, "-c", MEMORY_CHILD, str(root), str(out)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        *report, peak_kib = result.stdout.strip().splitlines()
        artifacts = json.loads("\n".join(report))
        assert [a["format"] for a in artifacts] == ["docker", "aci", "oci"]
        assert artifacts[0]["size"] > 2 << 30
        assert int(peak_kib) < 150 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"
    finally:
        for path in out.iterdir():
            path.unlink()
