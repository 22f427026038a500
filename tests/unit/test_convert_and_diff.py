"""convert makes a one-stage recipe of its source; diff names where two archives part ways."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from dualbuild import convert as convert_module
from dualbuild.convert import ConvertRequest, convert
from dualbuild.emit import run_emitters
from dualbuild.emit.artifact import ImageSpec
from dualbuild.errors import UsageError
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.tree import snapshot
from dualbuild.pipeline import BuildRequest
from dualbuild.recipe.model import AciBase, ArchiveBase, Format, Image, Recipe, RegistryBase
from dualbuild.verify.diff import diff_archives
from dualbuild.verify.sets import find_sets
from tests.support import SDE


def archive(path: Path, members: dict[str, bytes], *, compress: bool = False) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0) if compress else buffer.getvalue())
    return path


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Recipe, BuildRequest]]:
    """What convert hands to the build, instead of building."""
    calls: list[tuple[Recipe, BuildRequest]] = []
    monkeypatch.setattr(
        convert_module, "build_recipe", lambda recipe, request: calls.append((recipe, request))
    )
    return calls


def test_a_docker_archive_gives_its_name_and_tag_and_the_context_is_its_folder(
    tmp_path: Path, built: list[tuple[Recipe, BuildRequest]]
) -> None:
    manifest = [{"Config": "c.json", "RepoTags": ["example.com/web:2.1"], "Layers": []}]
    source = archive(tmp_path / "web.tar", {"manifest.json": json.dumps(manifest).encode()})
    convert(ConvertRequest(source=str(source), build=BuildRequest(recipe=source)))
    [(recipe, request)] = built
    assert (recipe.image.name, recipe.image.version) == ("example.com/web", "2.1")
    assert recipe.stages[0].base == ArchiveBase(kind="docker-archive", path="web.tar")  # type: ignore[arg-type]
    assert request.overrides.context == tmp_path
    assert request.overrides.out_dir == Path.cwd() / "dist"


def test_an_aci_gives_its_name_and_version_label(
    tmp_path: Path, built: list[tuple[Recipe, BuildRequest]]
) -> None:
    labels = [{"name": "version", "value": "0.3"}]
    manifest = {"acKind": "ImageManifest", "name": "example.com/aci-app", "labels": labels}
    source = archive(tmp_path / "app.aci", {"manifest": json.dumps(manifest).encode()}, compress=True)
    convert(ConvertRequest(source=str(source), build=BuildRequest(recipe=source)))
    [(recipe, _)] = built
    assert (recipe.image.name, recipe.image.version) == ("example.com/aci-app", "0.3")
    assert recipe.stages[0].base == AciBase(path="app.aci")


def test_a_registry_reference_and_a_nameless_source(
    tmp_path: Path, built: list[tuple[Recipe, BuildRequest]]
) -> None:
    convert(ConvertRequest(source="registry.example/team/app:5", build=BuildRequest(recipe=Path("x"))))
    assert built[0][0].stages[0].base == RegistryBase(reference="registry.example/team/app:5")
    assert (built[0][0].image.name, built[0][0].image.version) == ("registry.example/team/app", "5")
    oci = archive(tmp_path / "x.tar", {"oci-layout": b"{}", "index.json": b"{}"})
    with pytest.raises(UsageError, match="cannot tell the image name"):
        convert(ConvertRequest(source=str(oci), build=BuildRequest(recipe=oci)))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(UsageError, match="not an image archive"):
        convert(ConvertRequest(source=str(junk), build=BuildRequest(recipe=junk)))


def test_diff_names_the_first_entries_that_differ_even_inside_a_layer(tmp_path: Path) -> None:
    def image(path: Path, word: bytes) -> Path:
        layer = io.BytesIO()
        archive(tmp_path / "layer", {"etc/word": word, "etc/same": b"same"})
        layer.write((tmp_path / "layer").read_bytes())
        return archive(
            path, {"manifest.json": b"[]", "blobs/sha256/layer": gzip.compress(layer.getvalue(), mtime=0)}
        )

    left, right = image(tmp_path / "a.tar", b"one"), image(tmp_path / "b.tar", b"two")
    assert diff_archives(left, left) == []
    assert diff_archives(left, right) == ["a.tar:blobs/sha256/layer: etc/word: content"]


def test_sets_pair_each_docker_tarball_with_its_aci(tmp_path: Path) -> None:
    for name in ("a-1-linux-amd64.docker.tar", "a-1-linux-amd64.aci", "b-2-linux-arm64.aci", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    first, second = find_sets([tmp_path])
    assert (first.stem, first.docker, first.aci) == (
        "a-1-linux-amd64", tmp_path / "a-1-linux-amd64.docker.tar", tmp_path / "a-1-linux-amd64.aci",
    )  # fmt: skip
    assert first.aci_signature == tmp_path / "a-1-linux-amd64.aci.asc"
    assert (second.stem, second.docker) == ("b-2-linux-arm64", None)


def test_diff_of_two_emitted_builds_names_the_entry_inside_each_layer(tmp_path: Path) -> None:
    """Layers are stored under their digests: a changed layer pairs with its counterpart anyway."""
    artifacts = {}
    for word in ("one", "two"):
        root = tmp_path / word / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc/same").write_text("same")
        (root / "etc/word").write_text(word)
        (root / "srv").mkdir()
        (root / "srv/big").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, the same in both
        targets = {
            Format.DOCKER: tmp_path / word / "app.docker.tar",
            Format.OCI: tmp_path / word / "app.oci.tar",
            Format.ACI: tmp_path / word / "app.aci",
        }
        spec = ImageSpec(
            image=Image(name="example.com/app", version="1", tags=("latest",)),
            config=ImageConfig(),
            source_date_epoch=SDE,
        )
        artifacts[word] = {a.format: a for a in run_emitters(snapshot(root, SDE), spec, targets)}
    for fmt, prefix in ((Format.DOCKER, "app.docker.tar"), (Format.OCI, "app.oci.tar")):
        one, two = artifacts["one"][fmt], artifacts["two"][fmt]
        assert diff_archives(one.path, one.path) == []
        found = diff_archives(one.path, two.path)
        layer = one.layer_digests[0].removeprefix("sha256:")
        assert found[0] == f"{prefix}:blobs/sha256/{layer}: etc/word: content", fmt
        # What follows from the new layer (its digest in the config, manifest, index) comes after.
        assert f"{prefix}: index.json: content" in found
    aci = diff_archives(artifacts["one"][Format.ACI].path, artifacts["two"][Format.ACI].path)
    assert aci == ["app.aci: rootfs/etc/word: content"]


def test_diff_names_an_entry_only_one_archive_has(tmp_path: Path) -> None:
    left = archive(tmp_path / "a.tar", {"same": b"x"})
    right = archive(tmp_path / "b.tar", {"same": b"x", "extra": b"y"})
    assert diff_archives(left, right) == ["a.tar: extra: only the second archive goes on"]
    renamed = archive(tmp_path / "c.tar", {"other": b"x"})
    assert diff_archives(left, renamed) == ["a.tar: entry order differs: 'same' vs 'other'"]
    layer = archive(tmp_path / "layer.tar", {"etc/x": b"1"}).read_bytes()
    plain = archive(tmp_path / "d.tar", {"blobs/sha256/" + "a" * 64: layer})
    zipped = archive(tmp_path / "e.tar", {"blobs/sha256/" + "b" * 64: gzip.compress(layer, mtime=0)})
    # The same entries, stored differently: the member's bytes differ, its entries do not.
    assert diff_archives(plain, zipped) == [
        f"d.tar: blobs/sha256/{'a' * 64}: size {len(layer)} vs {len(gzip.compress(layer, mtime=0))}, content"
    ]
