"""verify: a Docker tarball and an ACI read back and compared entry by entry."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dualbuild.emit.aci import emit_aci
from dualbuild.emit.artifact import ImageSpec
from dualbuild.emit.docker import emit_docker
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tree import EntryType, snapshot
from dualbuild.recipe.model import Image
from dualbuild.verify.entries import ArchivedEntry, compare_entries
from dualbuild.verify.sets import find_sets, verify_set
from dualbuild.verify.trees import verify
from tests.support import SDE, build_rich_tree, supports_user_xattrs

IMAGE = Image(name="example.com/verify", version="1")


def emit_pair(tmp_path: Path, docker_root: Path, aci_root: Path) -> tuple[Path, Path]:
    spec = ImageSpec(image=IMAGE, config=ImageConfig(), source_date_epoch=SDE)
    docker = emit_docker(snapshot(docker_root, SDE), spec, tmp_path / "v.docker.tar")
    aci = emit_aci(snapshot(aci_root, SDE), spec, tmp_path / "v.aci")
    return docker.path, aci.path


def test_artifacts_of_one_tree_verify(tmp_path: Path) -> None:
    root = build_rich_tree(tmp_path / "root", privileged=os.geteuid() == 0)
    assert verify(*emit_pair(tmp_path, root, root)) == []


def test_differences_are_named_by_path_and_field(tmp_path: Path) -> None:
    left = build_rich_tree(tmp_path / "left", privileged=False)
    right = build_rich_tree(tmp_path / "right", privileged=False)
    (right / "file").write_text("changed\n")
    (right / "bin/tool").chmod(0o700)
    (right / "empty").rmdir()
    (right / "link").unlink()
    os.symlink("elsewhere", right / "link")
    (right / "extra").write_text("only here")
    if supports_user_xattrs(right):
        os.setxattr(right / "bin/tool", "user.added", b"x")
    differences = verify(*emit_pair(tmp_path, left, right))
    assert "/file: sha256 differs" in "\n".join(differences)
    assert "/file: size differs: Docker layer 6, ACI 8" in differences
    assert "/bin/tool: mode differs: Docker layer 0o755, ACI 0o700" in differences
    assert "/empty: only in the Docker layer" in differences
    assert "/extra: only in the ACI" in differences
    assert "/link: link_target differs: Docker layer 'file', ACI 'elsewhere'" in differences
    if supports_user_xattrs(right):
        assert any(d.startswith("/bin/tool: xattrs differ") for d in differences)


def rewrite_member(archive: Path, name: str, data: bytes) -> None:
    """Replace one member's content in place (same name: the digest no longer matches)."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, content in members:
            if member.name == name:
                content = data
                member.size = len(data)
            tar.addfile(member, io.BytesIO(content) if content is not None else None)


def test_a_tampered_config_or_layer_is_found(tmp_path: Path) -> None:
    root = build_rich_tree(tmp_path / "root", privileged=False)
    docker, aci = emit_pair(tmp_path, root, root)
    with tarfile.open(docker) as tar:
        manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    item = json.loads(manifest)[0]
    rewrite_member(docker, item["Config"], b'{"rootfs":{"diff_ids":["sha256:00"]}}')
    differences = verify(docker, aci)
    assert any(d.startswith(f"docker archive: config {item['Config']} hashes to") for d in differences)
    assert any("layer 1's diff_id is" in d and "sha256:00" in d for d in differences)


def test_an_unreadable_artifact_is_a_difference(tmp_path: Path) -> None:
    (tmp_path / "bad.docker.tar").write_bytes(b"not a tar")
    (tmp_path / "bad.aci").write_bytes(b"")
    differences = verify(tmp_path / "bad.docker.tar", tmp_path / "bad.aci")
    assert len(differences) == 1
    assert differences[0].startswith("cannot read the artifacts")


def entry(path: str, **changes: object) -> ArchivedEntry:
    fields: dict[str, object] = {
        "path": path,
        "type": EntryType.FILE,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "size": 1,
    }
    fields.update(changes)
    return ArchivedEntry(**fields)  # type: ignore[arg-type]


def test_compare_matches_by_path_whatever_the_order() -> None:
    left = [entry("a"), entry("b"), entry("c")]
    right = [entry("c"), entry("a"), entry("b", uid=5)]
    assert compare_entries(iter(left), iter(right), ("L", "R")) == ["/b: uid differs: L 0, R 5"]


@pytest.mark.parametrize("side", [0, 1])
def test_compare_reports_entries_on_one_side_only(side: int) -> None:
    streams = [[entry("a"), entry("z")], [entry("a")]]
    if side:
        streams.reverse()
    names = ("L", "R")
    assert compare_entries(iter(streams[0]), iter(streams[1]), names) == [f"/z: only in the {names[side]}"]


def test_verify_opens_only_regular_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.aci")  # opening it for reading would wait for a writer forever
    (tmp_path / "x.docker.tar").mkdir()
    (tmp_path / "x.aci.asc").write_text("")
    (found,) = find_sets([tmp_path])
    assert verify_set(found, keyring=None) == [
        "x.docker.tar is not a regular file (a directory)",
        "x.aci is not a regular file (a FIFO)",
    ]


def _tar_of(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _manifest(layers: object) -> bytes:
    return json.dumps([{"Config": "c.json", "Layers": layers}]).encode()


@pytest.mark.parametrize(
    ("manifest", "config", "difference"),
    [
        (b"[1]", b"{}", "manifest.json's image needs a Config path and a list of Layers"),
        (_manifest(None), b"{}", "needs a Config path"),
        (_manifest([]), b"[]", "c.json has no rootfs.diff_ids list"),
        (_manifest([]), b'{"rootfs": null}', "no rootfs.diff_ids"),
        (
            b"[" * 100_000 + b"]" * 100_000,
            b"{}",
            "manifest.json is not JSON dualbuild can read (RecursionError)",
        ),
        (b"not json", b"{}", "manifest.json is not JSON dualbuild can read (JSONDecodeError)"),
    ],
)
def test_a_malformed_docker_archive_is_a_difference_not_a_crash(
    tmp_path: Path, manifest: bytes, config: bytes, difference: str
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    _, aci = emit_pair(tmp_path, root, root)
    docker = _tar_of(tmp_path / "bad.docker.tar", {"manifest.json": manifest, "c.json": config})
    differences = verify(docker, aci)
    assert any(difference in line for line in differences), differences
