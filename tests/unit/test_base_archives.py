"""An image archive used as a base holds one image, and its views agree (readers take different ones)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from dualbuild.archive import check_one_image
from dualbuild.emit.aci import emit_aci
from dualbuild.emit.artifact import ImageSpec
from dualbuild.emit.docker import emit_docker
from dualbuild.emit.oci import emit_oci
from dualbuild.errors import BuildError
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tree import snapshot
from dualbuild.recipe.model import ArchiveKind, Image
from dualbuild.verify.trees import verify
from tests.support import SDE

IMAGE = Image(name="example.com/base", version="1", tags=("latest", "1.0"))


def _rewritten(source: Path, dest: Path, changes: dict[str, bytes]) -> Path:
    with tarfile.open(source) as old, tarfile.open(dest, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name in changes:
                data = changes[member.name]
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    spec = ImageSpec(image=IMAGE, config=ImageConfig(), source_date_epoch=SDE)
    docker = emit_docker(snapshot(root, SDE), spec, tmp_path / "b.docker.tar").path
    oci = emit_oci(snapshot(root, SDE), spec, tmp_path / "b.oci.tar").path
    return {"docker": docker, "oci": oci}


def test_one_image_under_several_tags_is_a_base(archives: dict[str, Path]) -> None:
    check_one_image(archives["docker"], ArchiveKind.DOCKER_ARCHIVE)
    check_one_image(archives["oci"], ArchiveKind.OCI_ARCHIVE)


def test_two_entries_in_manifest_json_are_refused(archives: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(archives["docker"]) as archive:
        entry = json.load(archive.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
    evil = {**entry, "RepoTags": ["evil:1"]}
    two = _rewritten(
        archives["docker"], tmp_path / "two.tar", {"manifest.json": json.dumps([entry, evil]).encode()}
    )
    with pytest.raises(BuildError, match=r"manifest\.json lists 2 images; a base must be one") as caught:
        check_one_image(two, ArchiveKind.DOCKER_ARCHIVE)
    assert caught.value.exit_code == 1


def test_views_that_disagree_are_refused(archives: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(archives["docker"]) as archive:
        entry = json.load(archive.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
    other = {**entry, "Config": "blobs/sha256/" + "0" * 64}
    lying = _rewritten(
        archives["docker"], tmp_path / "lying.tar", {"manifest.json": json.dumps([other]).encode()}
    )
    with pytest.raises(BuildError, match="the two views of the archive disagree"):
        check_one_image(lying, ArchiveKind.DOCKER_ARCHIVE)


def test_an_oci_archive_of_two_images_is_refused(archives: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(archives["oci"]) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
    second = {**index["manifests"][0], "digest": "sha256:" + "1" * 64}
    index["manifests"].append(second)
    two = _rewritten(archives["oci"], tmp_path / "two.oci.tar", {"index.json": json.dumps(index).encode()})
    with pytest.raises(BuildError, match=r"index\.json names 2 images"):
        check_one_image(two, ArchiveKind.OCI_ARCHIVE)


def test_verify_names_an_archive_whose_views_disagree(archives: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(archives["docker"]) as archive:
        entry = json.load(archive.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
    evil = {**entry, "RepoTags": ["evil:1"]}
    two = _rewritten(
        archives["docker"], tmp_path / "two.tar", {"manifest.json": json.dumps([entry, evil]).encode()}
    )
    root = tmp_path / "root"
    spec = ImageSpec(image=IMAGE, config=ImageConfig(), source_date_epoch=SDE)
    aci = emit_aci(snapshot(root, SDE), spec, tmp_path / "b.aci").path
    differences = verify(two, aci)
    assert any("manifest.json lists 2 images" in line for line in differences), differences
