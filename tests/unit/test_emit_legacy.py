"""The Docker tarball read as pre-manifest.json tools read it: ``repositories`` and ``<id>/``."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dualbuild.emit.artifact import ImageSpec
from dualbuild.emit.docker import emit_docker
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tree import Tree, snapshot
from dualbuild.recipe.model import Format
from dualbuild.verify.trees import read_entries, verify
from tests.support import SDE, build_rich_tree
from tests.unit.test_emit import CONFIG, IMAGE, emit_all, expected_entries


@pytest.fixture
def rich_tree(tmp_path: Path) -> Tree:
    return snapshot(build_rich_tree(tmp_path / "root", privileged=os.geteuid() == 0), SDE)


def read_legacy(archive: Path, repository: str, tag: str) -> tuple[dict[str, object], list[bytes]]:
    """The top layer's v1 json and the layer tars, bottom first, from the legacy layout alone.

    What docker2aci and Docker's own pre-1.10 loader do: ``repositories`` names the top layer,
    each ``<id>/json`` its parent, and ``<id>/layer.tar`` is the layer (here a symlink, which
    tarfile follows inside the archive). manifest.json, index.json and blobs/ are never read.
    """
    with tarfile.open(archive) as tar:

        def member(name: str) -> bytes:
            content = tar.extractfile(name)
            assert content is not None, name
            return content.read()

        layer_id: str | None = json.loads(member("repositories"))[repository][tag]
        chain: list[str] = []
        top: dict[str, object] = {}
        while layer_id:
            assert layer_id not in chain, f"parent loop at {layer_id}"
            chain.append(layer_id)
            assert member(f"{layer_id}/VERSION") == b"1.0"
            layer_json = json.loads(member(f"{layer_id}/json"))
            assert layer_json["id"] == layer_id
            top = top or layer_json
            layer_id = layer_json.get("parent")
        return top, [member(f"{layer_id}/layer.tar") for layer_id in reversed(chain)]


def test_a_legacy_reader_recovers_the_tree_and_config(rich_tree: Tree, tmp_path: Path) -> None:
    artifacts = emit_all(rich_tree, tmp_path / "out")
    docker = artifacts[Format.DOCKER]
    for tag in ("1.2.3", "latest", "1.2"):
        top, layers = read_legacy(docker.path, "example.com/team/hello", tag)
        assert len(layers) == 1
        assert list(read_entries(io.BytesIO(layers[0]))) == expected_entries(rich_tree)
        assert top["created"] == "2023-11-14T22:13:20Z"
        assert (top["os"], top["architecture"], top["variant"]) == ("linux", "arm", "v7")
        config = top["config"]
        assert isinstance(config, dict)
        assert (config["Entrypoint"], config["User"], config["WorkingDir"]) == (["/bin/tool"], "app", "/srv")
    # The layer's bytes are stored once: besides its blob, the archive holds only small JSON.
    with tarfile.open(docker.path) as tar:
        sizes = {member.name: member.size for member in tar.getmembers()}
    layer_blob = "blobs/sha256/" + docker.layer_digests[0].removeprefix("sha256:")
    assert sizes.pop(layer_blob) == len(layers[0]) > 16 << 10
    assert sum(sizes.values()) < 16 << 10
    assert verify(docker.path, artifacts[Format.ACI].path) == []


def test_the_legacy_id_follows_the_config(rich_tree: Tree, tmp_path: Path) -> None:
    """Another config, same layer: another v1 id, as Docker's ids of v1 images were."""

    def legacy_id(config: ImageConfig, name: str) -> str:
        spec = ImageSpec(image=IMAGE, config=config, source_date_epoch=SDE)
        artifact = emit_docker(rich_tree, spec, tmp_path / name)
        with tarfile.open(artifact.path) as tar:
            repositories = tar.extractfile("repositories")
            assert repositories is not None
            return str(json.loads(repositories.read())[IMAGE.name][IMAGE.version])

    first, again, other = (
        legacy_id(CONFIG, "a.docker.tar"),
        legacy_id(CONFIG, "b.docker.tar"),
        legacy_id(ImageConfig(), "c.docker.tar"),
    )
    assert first == again != other
    assert len(first) == 64
    assert int(first, 16) >= 0
