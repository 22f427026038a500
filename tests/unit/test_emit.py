"""The emitters: Docker tarball, ACI and OCI archive from one tree, checked by real tools."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import tarfile
import threading
from pathlib import Path

import pytest

from dualbuild import emit as emit_module
from dualbuild.emit import Artifact, EmitError, run_emitters
from dualbuild.emit.aci import emit_aci
from dualbuild.emit.artifact import ImageSpec
from dualbuild.emit.docker import emit_docker, repo_tags
from dualbuild.emit.oci import LayoutWriter, emit_oci, normalized_reference
from dualbuild.errors import BuildError
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tarwriter import Cancelled, set_cancel_event
from dualbuild.layer.tree import EntryType, Tree, decode_name, snapshot
from dualbuild.recipe.model import (
    MAX_SOURCE_DATE_EPOCH,
    Arch,
    Format,
    Healthcheck,
    Image,
    Port,
    Protocol,
    Volume,
)
from dualbuild.verify.entries import ArchivedEntry, read_entries
from tests.support import (
    CAPABILITY,
    HANG_SECONDS,
    LONG_PATH,
    NON_UTF8,
    SDE,
    build_rich_tree,
)

IMAGE = Image(
    name="example.com/team/hello",
    version="1.2.3",
    tags=("latest", "1.2"),
    arch=Arch.ARM_V7,
    labels={"org.opencontainers.image.source": "https://example.com/src"},
    annotations={"authors": "Hello Team", "homepage": "https://example.com"},
)
CONFIG = ImageConfig(
    entrypoint=("/bin/tool",),
    cmd=("--greet", "world"),
    user="app",
    workdir="/srv",
    env=(("PATH", "/usr/bin:/bin"), ("GREETING", "hello=there")),
    ports=(Port(name="http", port=8080), Port(name="dns", port=53, protocol=Protocol.UDP, count=2)),
    volumes=(Volume(name="data", path="/data"), Volume(name="conf", path="/etc/conf", read_only=True)),
    labels={"org.opencontainers.image.source": "https://example.com/src"},
    stop_signal="SIGINT",
    healthcheck=Healthcheck(
        cmd=("curl -f http://localhost/",), shell=True, interval_ns=30_000_000_000, retries=3
    ),
)
ALL = (Format.DOCKER, Format.ACI, Format.OCI)


def emit_all(
    tree: Tree, out: Path, *, image: Image = IMAGE, config: ImageConfig = CONFIG
) -> dict[Format, Artifact]:
    out.mkdir(parents=True, exist_ok=True)
    suffix = {Format.DOCKER: ".docker.tar", Format.ACI: ".aci", Format.OCI: ".oci.tar"}
    targets = {fmt: out / f"hello{suffix[fmt]}" for fmt in ALL}
    return {
        artifact.format: artifact
        for artifact in run_emitters(
            tree, ImageSpec(image=image, config=config, source_date_epoch=SDE), targets
        )
    }


def outer_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        content = tar.extractfile(name)
        assert content is not None, name
        return content.read()


def outer_json(archive: Path, name: str) -> object:
    return json.loads(outer_member(archive, name))


def blob(archive: Path, digest: str) -> bytes:
    return outer_member(archive, "blobs/sha256/" + digest.removeprefix("sha256:"))


def layer_entries(archive: Path, digest: str) -> list[ArchivedEntry]:
    data = blob(archive, digest)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return list(read_entries(io.BytesIO(data)))


def aci_entries(aci: Path) -> list[ArchivedEntry]:
    with gzip.open(aci, "rb") as stream:
        return list(read_entries(stream, prefix="rootfs/"))  # type: ignore[arg-type]


def expected_entries(tree: Tree) -> list[ArchivedEntry]:
    """What the archives must hold, computed from the tree and the files on disk."""
    expected = []
    for entry in tree.entries:
        digest = ""
        if entry.type is EntryType.FILE:
            with open(tree.source_path(entry), "rb") as file:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
        expected.append(
            ArchivedEntry(
                path=entry.path,
                type=entry.type,
                mode=entry.mode,
                uid=entry.uid,
                gid=entry.gid,
                size=entry.size,
                sha256=digest,
                link_target=entry.link_target,
                devmajor=entry.devmajor,
                devminor=entry.devminor,
                xattrs=entry.xattrs,
            )
        )
    return expected


@pytest.fixture
def rich_tree(tmp_path: Path) -> Tree:
    privileged = os.geteuid() == 0
    return snapshot(build_rich_tree(tmp_path / "root", privileged=privileged), SDE)


# --- same tree in every format --------------------------------------------------------------


def test_every_format_holds_exactly_the_tree(rich_tree: Tree, tmp_path: Path) -> None:
    artifacts = emit_all(rich_tree, tmp_path / "out")
    expected = expected_entries(rich_tree)
    docker = layer_entries(artifacts[Format.DOCKER].path, artifacts[Format.DOCKER].layer_digests[0])
    oci = layer_entries(artifacts[Format.OCI].path, artifacts[Format.OCI].layer_digests[0])
    aci = aci_entries(artifacts[Format.ACI].path)
    assert docker == expected
    assert aci == expected
    assert oci == expected
    paths = {entry.path: entry for entry in docker}
    assert paths["hard"].type is EntryType.HARDLINK
    assert paths["hard"].link_target == "file"
    assert paths["bin/suid"].mode == 0o4755
    assert paths["fifo"].type is EntryType.FIFO
    assert LONG_PATH in paths
    assert decode_name(NON_UTF8) in paths
    assert paths["empty"].type is EntryType.DIR
    assert "control.sock" not in paths
    if os.geteuid() == 0:
        assert paths["bin/ping"].xattrs == (("security.capability", CAPABILITY),)
        assert (paths["devices/null"].type, paths["devices/null"].devmajor) == (EntryType.CHAR, 1)


def test_hardlinks_in_the_aci_carry_the_rootfs_prefix(rich_tree: Tree, tmp_path: Path) -> None:
    artifact = emit_aci(
        rich_tree, ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE), tmp_path / "x.aci"
    )
    with tarfile.open(artifact.path, "r:gz") as tar:
        names = tar.getnames()
        hard = tar.getmember("rootfs/hard")
    # rkt links to join(root, Linkname) and actool wants manifest + rootfs first.
    assert hard.linkname == "rootfs/file"
    assert names[:2] == ["manifest", "rootfs"]
    assert all(name.startswith("rootfs/") for name in names[2:])


def test_archives_are_reproducible_tars(rich_tree: Tree, tmp_path: Path) -> None:
    artifacts = emit_all(rich_tree, tmp_path / "out")
    docker = artifacts[Format.DOCKER]
    layers = [
        blob(docker.path, docker.layer_digests[0]),
        gzip.decompress(blob(artifacts[Format.OCI].path, artifacts[Format.OCI].layer_digests[0])),
        gzip.decompress(artifacts[Format.ACI].path.read_bytes()),
        docker.path.read_bytes(),
        artifacts[Format.OCI].path.read_bytes(),
    ]
    for data in layers:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            assert tar.pax_headers == {}, "no PAX global header (actool rejects it)"
        for member in members:
            assert not {"atime", "ctime", "mtime"} & set(member.pax_headers), member.name
            assert (member.uname, member.gname) == ("", "")
            assert member.mtime <= SDE
        assert b"pax_global_header" not in data
    for data in (layers[2], layers[3]):
        # ustar type flag 'g' = global header: none anywhere in the stream.
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert all(member.type != tarfile.XGLTYPE for member in tar.getmembers())


def test_gzip_headers_carry_no_time_or_name(rich_tree: Tree, tmp_path: Path) -> None:
    artifacts = emit_all(rich_tree, tmp_path / "out")
    oci = artifacts[Format.OCI]
    for data in (artifacts[Format.ACI].path.read_bytes()[:10], blob(oci.path, oci.layer_digests[0])[:10]):
        # magic, deflate, no flags (no FNAME), mtime 0, XFL 0, OS 255 "unknown".
        assert data == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_emitting_twice_gives_identical_bytes(tmp_path: Path) -> None:
    privileged = os.geteuid() == 0
    # Two separately built trees: other inodes, other directory order, mtimes of "now".
    first = emit_all(
        snapshot(build_rich_tree(tmp_path / "a", privileged=privileged), SDE), tmp_path / "out-a"
    )
    second = emit_all(
        snapshot(build_rich_tree(tmp_path / "b", privileged=privileged), SDE), tmp_path / "out-b"
    )
    for fmt in ALL:
        assert first[fmt].path.read_bytes() == second[fmt].path.read_bytes(), fmt
        assert first[fmt].sha256 == second[fmt].sha256
        assert first[fmt].image_id == second[fmt].image_id


def test_artifact_ids_match_the_bytes(rich_tree: Tree, tmp_path: Path) -> None:
    artifacts = emit_all(rich_tree, tmp_path / "out")
    for artifact in artifacts.values():
        data = artifact.path.read_bytes()
        assert artifact.sha256 == hashlib.sha256(data).hexdigest()
        assert artifact.size == len(data)
    aci = artifacts[Format.ACI]
    assert aci.image_id == "sha512-" + hashlib.sha512(gzip.decompress(aci.path.read_bytes())).hexdigest()
    docker, oci = artifacts[Format.DOCKER], artifacts[Format.OCI]
    assert docker.diff_ids == oci.diff_ids, "the same layer tar in both"
    assert docker.layer_digests == docker.diff_ids, "the Docker layer is uncompressed"
    assert oci.layer_digests != oci.diff_ids
    for artifact in (docker, oci):
        assert artifact.config_digest == artifact.image_id
        config = blob(artifact.path, artifact.image_id)
        assert "sha256:" + hashlib.sha256(config).hexdigest() == artifact.image_id
        manifest = blob(artifact.path, str(artifact.manifest_digest))
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == artifact.manifest_digest
        layer = blob(artifact.path, artifact.layer_digests[0])
        assert "sha256:" + hashlib.sha256(layer).hexdigest() == artifact.layer_digests[0]
        raw = gzip.decompress(layer) if artifact is oci else layer
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == artifact.diff_ids[0]


# --- Docker and OCI JSON --------------------------------------------------------------------


def test_docker_archive_files(rich_tree: Tree, tmp_path: Path) -> None:
    artifact = emit_docker(
        rich_tree, ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE), tmp_path / "hello.docker.tar"
    )
    with tarfile.open(artifact.path) as tar:
        members = tar.getmembers()
    names = [member.name for member in members]
    layer, config_hex, manifest_hex = (
        d.removeprefix("sha256:")
        for d in (artifact.layer_digests[0], str(artifact.config_digest), str(artifact.manifest_digest))
    )
    repositories = outer_json(artifact.path, "repositories")
    assert isinstance(repositories, dict)
    legacy_id = repositories["example.com/team/hello"]["1.2.3"]
    assert repositories == {"example.com/team/hello": dict.fromkeys(("1.2.3", "latest", "1.2"), legacy_id)}
    assert names == [
        "blobs", "blobs/sha256", f"blobs/sha256/{layer}", f"blobs/sha256/{config_hex}",
        f"blobs/sha256/{manifest_hex}", "index.json", "oci-layout", legacy_id, f"{legacy_id}/VERSION",
        f"{legacy_id}/json", f"{legacy_id}/layer.tar", "manifest.json", "repositories",
    ]  # fmt: skip
    assert all((m.uid, m.gid, m.mtime) == (0, 0, SDE) for m in members)
    assert all(m.mode == (0o755 if m.isdir() else 0o777 if m.issym() else 0o644) for m in members)
    # The legacy layout of docker save: the layer stored once, its v1 json the image's config.
    assert outer_member(artifact.path, f"{legacy_id}/VERSION") == b"1.0"
    link = members[names.index(f"{legacy_id}/layer.tar")]
    assert (link.issym(), link.linkname) == (True, f"../blobs/sha256/{layer}")
    legacy = outer_json(artifact.path, f"{legacy_id}/json")
    assert isinstance(legacy, dict)
    assert (legacy["id"], legacy["os"], legacy["architecture"], legacy["variant"]) == (
        legacy_id, "linux", "arm", "v7",
    )  # fmt: skip
    assert "parent" not in legacy
    assert outer_json(artifact.path, "manifest.json") == [
        {
            "Config": f"blobs/sha256/{config_hex}",
            "RepoTags": [
                "example.com/team/hello:1.2.3",
                "example.com/team/hello:latest",
                "example.com/team/hello:1.2",
            ],
            "Layers": [f"blobs/sha256/{layer}"],
        }
    ]
    assert outer_json(artifact.path, "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = outer_json(artifact.path, "index.json")
    # One descriptor per tag, all naming the one manifest, as `docker save` writes them.
    assert index == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": artifact.manifest_digest,
                "size": len(blob(artifact.path, str(artifact.manifest_digest))),
                "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
                "annotations": {
                    "org.opencontainers.image.ref.name": tag,
                    "io.containerd.image.name": f"example.com/team/hello:{tag}",
                },
            }
            for tag in ("1.2.3", "latest", "1.2")
        ],
    }
    assert json.loads(blob(artifact.path, str(artifact.manifest_digest))) == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": artifact.config_digest,
            "size": len(blob(artifact.path, str(artifact.config_digest))),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": artifact.layer_digests[0],
                "size": len(blob(artifact.path, artifact.layer_digests[0])),
            }
        ],
        "annotations": {"authors": "Hello Team", "homepage": "https://example.com"},
    }
    config_bytes = blob(artifact.path, str(artifact.config_digest))
    assert (
        json.dumps(json.loads(config_bytes), sort_keys=True, separators=(",", ":")).encode() == config_bytes
    )
    assert json.loads(config_bytes) == {
        "architecture": "arm",
        "variant": "v7",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "User": "app",
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hello=there"],
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["--greet", "world"],
            "WorkingDir": "/srv",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "54/udp": {}},
            "Volumes": {"/data": {}, "/etc/conf": {}},
            "Labels": {"org.opencontainers.image.source": "https://example.com/src"},
            "StopSignal": "SIGINT",
            "Healthcheck": {
                "Test": ["CMD-SHELL", "curl -f http://localhost/"],
                "Interval": 30_000_000_000,
                "Retries": 3,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": list(artifact.diff_ids)},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "dualbuild"}],
    }
    assert artifact.warnings == (
        "app.volumes: volume 'conf' (/etc/conf) is read-only, but an image config cannot mark a volume "
        "read-only; the Docker archive declares it read-write",
    )


def test_oci_archive_drops_the_healthcheck_with_a_warning(rich_tree: Tree, tmp_path: Path) -> None:
    artifact = emit_oci(
        rich_tree, ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE), tmp_path / "hello.oci.tar"
    )
    config = json.loads(blob(artifact.path, artifact.image_id))
    assert "Healthcheck" not in config["config"]
    assert config["config"]["StopSignal"] == "SIGINT"
    assert any(w.startswith("app.healthcheck:") and "OCI" in w for w in artifact.warnings)
    manifest = json.loads(blob(artifact.path, str(artifact.manifest_digest)))
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    index = outer_json(artifact.path, "index.json")
    assert isinstance(index, dict)
    # One descriptor, named as the Docker archive's first: podman refuses an OCI archive of several.
    assert [d["annotations"] for d in index["manifests"]] == [
        {
            "org.opencontainers.image.ref.name": "1.2.3",
            "io.containerd.image.name": "example.com/team/hello:1.2.3",
        }
    ]
    with tarfile.open(artifact.path) as tar:
        assert "manifest.json" not in tar.getnames()


def test_minimal_config_omits_unset_fields(rich_tree: Tree, tmp_path: Path) -> None:
    image = Image(name="hello", version="1")
    artifact = emit_docker(
        rich_tree,
        ImageSpec(image=image, config=ImageConfig(), source_date_epoch=SDE),
        tmp_path / "h.docker.tar",
    )
    config = json.loads(blob(artifact.path, artifact.image_id))
    assert config["config"] == {}
    assert "variant" not in config
    assert artifact.warnings == ()
    index = outer_json(artifact.path, "index.json")
    assert isinstance(index, dict)
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "docker.io/library/hello:1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hello", "docker.io/library/hello:v"),
        ("team/hello", "docker.io/team/hello:v"),
        ("example.com/hello", "example.com/hello:v"),
        ("localhost/hello", "localhost/hello:v"),
        ("registry:5000/a/b", "registry:5000/a/b:v"),
    ],
)
def test_normalized_reference(name: str, expected: str) -> None:
    assert normalized_reference(name, "v") == expected


def test_repo_tags_start_with_the_version_without_duplicates() -> None:
    image = Image(name="x", version="1.0", tags=("latest", "1.0", "1"))
    assert repo_tags(image) == ["x:1.0", "x:latest", "x:1"]


def test_blob_header_beyond_ustar_size_still_fits_one_block() -> None:
    layout = LayoutWriter(io.BytesIO(), mtime=SDE)
    header = layout._blob_header("blobs/sha256/" + "0" * 64, 9 << 30)
    assert len(header) == 512
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").size == 9 << 30


# --- ACI manifest ---------------------------------------------------------------------------


def aci_manifest_of(path: Path) -> dict[str, object]:
    with tarfile.open(path, "r:gz") as tar:
        content = tar.extractfile("manifest")
        assert content is not None
        return dict(json.loads(content.read()))


def test_aci_manifest(rich_tree: Tree, tmp_path: Path) -> None:
    artifact = emit_aci(
        rich_tree, ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE), tmp_path / "hello.aci"
    )
    assert aci_manifest_of(artifact.path) == {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": "example.com/team/hello",
        "labels": [
            {"name": "version", "value": "1.2.3"},
            {"name": "os", "value": "linux"},
            {"name": "arch", "value": "armv7l"},
        ],
        "app": {
            "exec": ["/bin/tool", "--greet", "world"],
            "user": "1000",
            "group": "1001",
            "workingDirectory": "/srv",
            "environment": [
                {"name": "PATH", "value": "/usr/bin:/bin"},
                {"name": "GREETING", "value": "hello=there"},
            ],
            "ports": [
                {"name": "http", "protocol": "tcp", "port": 8080, "count": 1},
                {"name": "dns", "protocol": "udp", "port": 53, "count": 2},
            ],
            "mountPoints": [
                {"name": "data", "path": "/data", "readOnly": False},
                {"name": "conf", "path": "/etc/conf", "readOnly": True},
            ],
            "userLabels": {"org.opencontainers.image.source": "https://example.com/src"},
        },
        "annotations": [
            {"name": "appc.io/docker/cmd", "value": '["--greet","world"]'},
            {"name": "appc.io/docker/entrypoint", "value": '["/bin/tool"]'},
            {"name": "authors", "value": "Hello Team"},
            {"name": "created", "value": "2023-11-14T22:13:20Z"},
            {"name": "homepage", "value": "https://example.com"},
        ],
    }
    assert artifact.warnings == (
        "app.healthcheck: the aci format has no healthcheck; the ACI does not carry it",
        "app.stop_signal: the aci format has no stop signal; the ACI does not carry SIGINT",
    )


def test_aci_defaults_to_root_and_slash(rich_tree: Tree, tmp_path: Path) -> None:
    config = ImageConfig(env=(("OK_NAME", "1"), ("1BAD", "2")))
    artifact = emit_aci(
        rich_tree,
        ImageSpec(image=Image(name="example.com/x", version="1"), config=config, source_date_epoch=SDE),
        tmp_path / "x.aci",
    )
    app = aci_manifest_of(artifact.path)["app"]
    assert app == {
        "user": "0",
        "group": "0",
        "workingDirectory": "/",
        "environment": [{"name": "OK_NAME", "value": "1"}],
    }
    assert artifact.warnings == (
        "app.env: '1BAD' is not a valid appc environment variable name; the ACI does not carry it",
    )


# --- failures leave nothing behind ----------------------------------------------------------


def test_a_failing_emitter_is_reported_and_others_finish(rich_tree: Tree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ImageConfig(user="ghost")
    with pytest.raises(EmitError) as info:
        emit_all(rich_tree, out, config=config)
    assert set(info.value.failures) == {Format.ACI}
    assert "aci: app user 'ghost' is not in the image's /etc/passwd" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["hello.docker.tar", "hello.oci.tar"]


def test_a_file_changing_during_export_fails_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "grows").write_text("short")
    tree = snapshot(root, SDE)
    (root / "grows").write_text("much longer now")
    out = tmp_path / "out"
    with pytest.raises(EmitError, match=r"/grows changed while the image was being written") as info:
        emit_all(tree, out)
    assert set(info.value.failures) == set(ALL)
    assert list(out.iterdir()) == []


def test_an_interrupt_cancels_every_emitter_and_leaves_nothing(
    rich_tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ACI's tap interrupts the main thread at its first write and then holds the ACI until
    # the interrupt has cancelled the emit: so the signal always lands while every emitter is
    # still writing, however slow the machine. 32 MiB that do not compress are more than the
    # queues between the producer and the tap hold (8 + 8 buffers of 1 MiB): while the tap
    # waits, the producer waits too, and the Docker tarball cannot be finished either.
    noise = 32 << 20
    (rich_tree.root / "noise.bin").write_bytes(os.urandom(noise))
    tree = snapshot(rich_tree.root, SDE)
    cancels: list[threading.Event] = []

    def recording(event: threading.Event) -> None:
        cancels.append(event)
        set_cancel_event(event)

    monkeypatch.setattr(emit_module, "set_cancel_event", recording)
    main = threading.main_thread().ident or 0
    tapped: list[int] = []

    class InterruptingTap:
        def write(self, data: bytes | bytearray | memoryview, /) -> None:
            if not tapped:
                signal.pthread_kill(main, signal.SIGINT)
                assert cancels[0].wait(HANG_SECONDS), "the interrupt never cancelled the emit"
            tapped.append(len(data))

    out = tmp_path / "out"
    out.mkdir()
    targets = {Format.DOCKER: out / "hello.docker.tar", Format.ACI: out / "hello.aci"}
    with pytest.raises(KeyboardInterrupt):
        run_emitters(
            tree,
            ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE),
            targets,
            taps={Format.ACI: InterruptingTap()},
        )
    assert list(out.iterdir()) == []
    # Stopped, not run to its end: a whole ACI would hold more than the noise.
    assert 0 < sum(tapped) < noise


def test_cancellation_stops_an_emitter_and_removes_its_file(rich_tree: Tree, tmp_path: Path) -> None:
    event = threading.Event()
    event.set()

    def cancelled_emit() -> None:
        set_cancel_event(event)
        emit_docker(
            rich_tree, ImageSpec(image=IMAGE, config=CONFIG, source_date_epoch=SDE), tmp_path / "x.docker.tar"
        )

    import contextvars

    with pytest.raises(Cancelled):
        contextvars.copy_context().run(cancelled_emit)
    assert list(tmp_path.iterdir()) == [tmp_path / "root"]


def test_unwritable_destination_is_a_build_error(rich_tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot write"):
        emit_aci(
            rich_tree,
            ImageSpec(image=IMAGE, config=ImageConfig(), source_date_epoch=SDE),
            tmp_path / "missing-dir" / "x.aci",
        )


# --- real tools -----------------------------------------------------------------------------


def test_the_latest_epoch_validation_accepts_is_carried_by_every_format(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_text("x")
    os.utime(root / "file", (9 * 10**9, 9 * 10**9))  # newer than the epoch: clamped to it
    spec = ImageSpec(image=IMAGE, config=ImageConfig(), source_date_epoch=MAX_SOURCE_DATE_EPOCH)
    targets = {fmt: tmp_path / f"x.{fmt}" for fmt in ALL}
    run_emitters(snapshot(root, MAX_SOURCE_DATE_EPOCH), spec, targets)
    with tarfile.open(targets[Format.ACI]) as aci:
        assert {member.mtime for member in aci.getmembers()} == {MAX_SOURCE_DATE_EPOCH}
    index = outer_json(targets[Format.OCI], "index.json")
    assert isinstance(index, dict)
    manifest = json.loads(blob(targets[Format.OCI], index["manifests"][0]["digest"]))
    config = json.loads(blob(targets[Format.OCI], manifest["config"]["digest"]))
    assert config["created"] == "2242-03-16T12:56:31Z"
