"""verify: the Docker config, its views (manifest.json, index.json, the OCI manifest) and the ACI agree.

Every tampered archive here is consistent in itself: the changed config or manifest is stored
under its new digest and every view names it, so only the comparison with the ACI (or of the
views with each other) can tell.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dualbuild.cli.main import cli
from dualbuild.emit.aci import emit_aci
from dualbuild.emit.artifact import ImageSpec
from dualbuild.emit.docker import emit_docker
from dualbuild.emit.oci import canonical_json
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tree import snapshot
from dualbuild.recipe.model import Arch, Healthcheck, Image, Port, Protocol, Volume
from dualbuild.verify import sets
from dualbuild.verify.trees import verify
from tests.support import SDE, build_rich_tree

IMAGE = Image(
    name="example.com/team/hello",
    version="1.2.3",
    tags=("latest",),
    arch=Arch.ARM_V7,
    labels={"org.opencontainers.image.source": "https://example.com/src"},
    annotations={"authors": "Hello Team", "homepage": "https://example.com"},
)
# Every field of [app], and what one format cannot carry: a stop signal and a healthcheck (no
# ACI field), a read-only volume (no Docker flag), an env name appc rejects (no ACI entry).
CONFIG = ImageConfig(
    entrypoint=("/bin/tool",),
    cmd=("--greet", "world"),
    user="app",
    group="staff",
    workdir="/srv",
    env=(("PATH", "/usr/bin:/bin"), ("GREETING", "hello=there"), ("1NOT_APPC", "x")),
    ports=(Port(name="http", port=8080), Port(name="dns", port=53, protocol=Protocol.UDP, count=2)),
    volumes=(Volume(name="data", path="/data"), Volume(name="conf", path="/etc/conf", read_only=True)),
    labels={"org.opencontainers.image.source": "https://example.com/src", "team": "hello"},
    stop_signal="SIGINT",
    healthcheck=Healthcheck(cmd=("/bin/tool", "--health"), interval_ns=30_000_000_000, retries=3),
)

Document = dict[str, object]


def emit_set(tmp_path: Path, root: Path | None = None, config: ImageConfig = CONFIG) -> tuple[Path, Path]:
    tree = snapshot(root or build_rich_tree(tmp_path / "root", privileged=False), SDE)
    spec = ImageSpec(image=IMAGE, config=config, source_date_epoch=SDE)
    out = tmp_path / "dist"
    out.mkdir()
    docker = emit_docker(tree, spec, out / "hello.docker.tar")
    aci = emit_aci(tree, spec, out / "hello.aci")
    return docker.path, aci.path


def _blob_name(data: bytes) -> str:
    return "blobs/sha256/" + hashlib.sha256(data).hexdigest()


def _descriptor(data: bytes, media_type: object) -> Document:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def tamper(
    archive: Path,
    *,
    config: Callable[[Document], None] = lambda _: None,
    manifest: Callable[[Document], None] = lambda _: None,
    legacy: bool = True,
) -> None:
    """Change the config and/or the OCI manifest, fixing up every digest and view that names them.

    The config blob is stored under its new digest, and manifest.json, the OCI manifest and the
    legacy ``<id>/json`` follow it (unless not ``legacy``); the OCI manifest likewise, and
    index.json follows it.
    """
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    contents = {member.name: data for member, data in members if data is not None}
    listed = json.loads(contents["manifest.json"])
    index = json.loads(contents["index.json"])
    old_config_name, old_manifest_name = (
        listed[0]["Config"],
        "blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:"),
    )
    document = json.loads(contents[old_config_name])
    config(document)
    config_bytes = canonical_json(document)
    oci_manifest = json.loads(contents[old_manifest_name])
    oci_manifest["config"] = _descriptor(config_bytes, oci_manifest["config"]["mediaType"])
    manifest(oci_manifest)
    manifest_bytes = canonical_json(oci_manifest)
    listed[0]["Config"] = _blob_name(config_bytes)
    for descriptor in index["manifests"]:
        descriptor.update(_descriptor(manifest_bytes, descriptor["mediaType"]))
    replaced = {
        old_config_name: (_blob_name(config_bytes), config_bytes),
        old_manifest_name: (_blob_name(manifest_bytes), manifest_bytes),
        "manifest.json": ("manifest.json", canonical_json(listed)),
        "index.json": ("index.json", canonical_json(index)),
    }
    for name, data in contents.items():
        if legacy and name.endswith("/json"):
            legacy = json.loads(data)
            legacy["config"] = document["config"]
            replaced[name] = (name, canonical_json(legacy))
    _rewrite(archive, members, replaced)


def _rewrite(
    archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], replaced: dict[str, tuple[str, bytes]]
) -> None:
    with tarfile.open(archive, "w") as tar:
        for member, data in members:
            if member.name in replaced:
                member.name, data = replaced[member.name]
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)


def runtime(change: Callable[[Document], None]) -> Callable[[Document], None]:
    def apply(document: Document) -> None:
        fields = document["config"]
        assert isinstance(fields, dict)
        change(fields)

    return apply


def test_an_untampered_set_with_every_field_set_verifies(tmp_path: Path) -> None:
    assert verify(*emit_set(tmp_path)) == []


def test_the_tamper_helper_keeps_an_archive_consistent(tmp_path: Path) -> None:
    docker, aci = emit_set(tmp_path)
    tamper(docker, config=runtime(lambda fields: None))
    assert verify(docker, aci) == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "Entrypoint",
            ["/bin/sh"],
            [
                'config: exec differs: Docker Entrypoint+Cmd ["/bin/sh", "--greet", "world"], '
                'ACI app.exec ["/bin/tool", "--greet", "world"]',
                'config: entrypoint differs: Docker Entrypoint ["/bin/sh"], '
                'ACI annotation appc.io/docker/entrypoint ["/bin/tool"]',
            ],
        ),
        (
            "Cmd",
            ["--evil"],
            [
                'config: exec differs: Docker Entrypoint+Cmd ["/bin/tool", "--evil"], '
                'ACI app.exec ["/bin/tool", "--greet", "world"]',
                'config: cmd differs: Docker Cmd ["--evil"], '
                'ACI annotation appc.io/docker/cmd ["--greet", "world"]',
            ],
        ),
        (
            "User",
            "root",
            [
                'config: user differs: Docker User "root" (user id 0), ACI app.user "1000"',
                'config: group differs: Docker User "root" (group id 0), ACI app.group "50"',
            ],
        ),
        (
            "User",
            "app:app",
            ['config: group differs: Docker User "app:app" (group id 1001), ACI app.group "50"'],
        ),
        (
            "User",
            "nobody",
            [
                "config: user differs: Docker User \"nobody\": 'nobody' is not in the image's /etc/passwd; "
                'ACI app.user "1000", app.group "50"'
            ],
        ),
        (
            "Env",
            ["PATH=/usr/bin:/bin", "GREETING=hello=there", "1NOT_APPC=x", "LD_PRELOAD=/evil.so"],
            [
                'config: env differs: Docker Env ["PATH=/usr/bin:/bin", "GREETING=hello=there", '
                '"LD_PRELOAD=/evil.so"], ACI app.environment ["PATH=/usr/bin:/bin", "GREETING=hello=there"]'
            ],
        ),
        (
            "WorkingDir",
            "/tmp",
            ['config: workdir differs: Docker WorkingDir "/tmp", ACI app.workingDirectory "/srv"'],
        ),
        (
            "ExposedPorts",
            {"8080/tcp": {}, "53/udp": {}, "54/udp": {}, "22/tcp": {}},
            [
                'config: ports differs: Docker ExposedPorts ["22/tcp", "53/udp", "54/udp", "8080/tcp"], '
                'ACI app.ports ["53/udp", "54/udp", "8080/tcp"]'
            ],
        ),
        (
            "Volumes",
            {"/data": {}},
            ['config: volumes differs: Docker Volumes ["/data"], ACI app.mountPoints ["/data", "/etc/conf"]'],
        ),
        (
            "Labels",
            {"org.opencontainers.image.source": "https://evil.example", "team": "hello"},
            [
                "config: label 'org.opencontainers.image.source' differs: Docker Labels "
                '"https://evil.example", ACI app.userLabels "https://example.com/src"'
            ],
        ),
    ],
)
def test_a_tampered_config_field_is_named_with_both_values(
    tmp_path: Path, key: str, value: object, expected: list[str]
) -> None:
    docker, aci = emit_set(tmp_path)
    tamper(docker, config=runtime(lambda fields: fields.__setitem__(key, value)))
    assert verify(docker, aci) == expected


def test_a_removed_field_is_named_too(tmp_path: Path) -> None:
    docker, aci = emit_set(tmp_path)
    tamper(docker, config=runtime(lambda fields: fields.pop("WorkingDir")))
    assert verify(docker, aci) == [
        'config: workdir differs: Docker WorkingDir "/", ACI app.workingDirectory "/srv"'
    ]


def test_a_legacy_json_left_behind_is_named(tmp_path: Path) -> None:
    """docker2aci reads ``<id>/json`` alone: it must hold the config the other views name."""
    docker, aci = emit_set(tmp_path)
    tamper(docker, config=runtime(lambda fields: fields.__setitem__("WorkingDir", "/tmp")), legacy=False)
    differences = verify(docker, aci)
    assert 'config: workdir differs: Docker WorkingDir "/tmp", ACI app.workingDirectory "/srv"' in differences
    assert any(
        d.startswith("docker archive: ")
        and d.endswith('/json\'s config WorkingDir is "/srv", the config\'s "/tmp"')
        for d in differences
    ), differences


def test_a_tampered_annotation_is_named(tmp_path: Path) -> None:
    docker, aci = emit_set(tmp_path)
    tamper(docker, manifest=lambda oci: oci.__setitem__("annotations", {"authors": "Hello Team"}))
    assert verify(docker, aci) == [
        "config: annotation 'homepage' differs: Docker OCI manifest annotations none, "
        'ACI annotations "https://example.com"'
    ]


def test_a_tampered_platform_is_named(tmp_path: Path) -> None:
    docker, aci = emit_set(tmp_path)
    tamper(docker, config=lambda document: document.update(architecture="amd64", variant=None))
    differences = verify(docker, aci)
    assert (
        'config: platform differs: Docker os "linux" architecture "amd64", '
        'ACI labels os "linux" arch "armv7l"' in differences
    )
    # index.json's platform still says arm/v7: another reader, another image.
    assert any('platform architecture is "arm", the config says "amd64"' in d for d in differences)


def _add_blob(archive: Path, data: bytes) -> None:
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    info = tarfile.TarInfo(_blob_name(data))
    info.size = len(data)
    members.insert(2, (info, data))
    _rewrite(archive, members, {})


def _empty_layer() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


def test_index_json_pointing_at_another_manifest_is_found(tmp_path: Path) -> None:
    """Same config, another layer: containerd and skopeo would load a tree the ACI does not hold."""
    docker, aci = emit_set(tmp_path)
    layer = _empty_layer()
    _add_blob(docker, layer)
    with tarfile.open(docker) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        blob = tar.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:"))
        original = json.load(blob)  # type: ignore[arg-type]
    tamper(
        docker,
        manifest=lambda oci: oci.__setitem__(
            "layers", [_descriptor(layer, original["layers"][0]["mediaType"])]
        ),
    )
    differences = verify(docker, aci)
    new_layers = ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert any(
        d.startswith("docker archive: index.json's manifest sha256:")
        and f"names layers {new_layers}, manifest.json names {[original['layers'][0]['digest']]}" in d
        for d in differences
    ), differences


def test_index_json_naming_two_manifests_is_found(tmp_path: Path) -> None:
    """One tag's descriptor names another manifest (here: the same image with other annotations)."""
    docker, aci = emit_set(tmp_path)
    with tarfile.open(docker) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        name = "blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:")
        oci_manifest = json.load(tar.extractfile(name))  # type: ignore[arg-type]
    oci_manifest["annotations"] = {"authors": "Someone Else", "homepage": "https://example.com"}
    other = canonical_json(oci_manifest)
    _add_blob(docker, other)
    index["manifests"][1].update(_descriptor(other, index["manifests"][1]["mediaType"]))
    with tarfile.open(docker) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    _rewrite(docker, members, {"index.json": ("index.json", canonical_json(index))})
    differences = verify(docker, aci)
    assert any("docker archive: index.json names 2 manifests" in d for d in differences), differences


def test_user_names_resolve_through_a_symlinked_passwd(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "lib/passwd").write_text("root:x:0:0::/:/bin/sh\n# comment\napp:x:1000:1001::/:/bin/sh\n")
    (root / "lib/group").write_text("root:x:0:\nstaff:x:50:\n")
    os.symlink("/lib/passwd", root / "etc/passwd")
    os.symlink("../lib/group", root / "etc/group")
    docker, aci = emit_set(tmp_path, root, ImageConfig(user="app"))
    assert verify(docker, aci) == []
    tamper(docker, config=runtime(lambda fields: fields.__setitem__("User", "app:staff")))
    assert verify(docker, aci) == [
        'config: group differs: Docker User "app:staff" (group id 50), ACI app.group "1001"'
    ]


def test_the_cli_fails_a_tampered_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker, _ = emit_set(tmp_path)
    monkeypatch.setattr(sets.gpg, "verify_in_keyring", lambda *_: None)  # the signature is not the point
    assert CliRunner().invoke(cli, ["verify", str(docker.parent)]).exit_code == 0
    tamper(docker, config=runtime(lambda fields: fields.__setitem__("User", "root")))
    result = CliRunner().invoke(cli, ["verify", str(docker.parent)])
    assert result.exit_code == 1, result.output
    assert "FAIL hello" in result.output
    assert 'config: user differs: Docker User "root" (user id 0), ACI app.user "1000"' in result.output
