"""The build report: what is written is what is read back, and a damaged one is a clear error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dualbuild.builder.stages import StepTiming
from dualbuild.emit.artifact import Artifact
from dualbuild.errors import ReportError
from dualbuild.plan import ArtifactFiles
from dualbuild.publish.types import Build
from dualbuild.recipe import load_recipe
from dualbuild.recipe.model import Format
from dualbuild.report import (
    AciLayer,
    ImageRecord,
    Published,
    PublishedAci,
    PublishedImage,
    Report,
    Signature,
    read_report,
    report_json,
    write_report,
)

DOCKER = Artifact(
    format=Format.DOCKER,
    path=Path("/out/x.docker.tar"),
    sha256="a" * 64,
    size=10,
    image_id="sha256:" + "c" * 64,
    config_digest="sha256:" + "c" * 64,
    manifest_digest="sha256:" + "d" * 64,
    diff_ids=("sha256:" + "e" * 64,),
    layer_digests=("sha256:" + "e" * 64,),
    warnings=("app.volumes: ...",),
)
ACI = Artifact(
    format=Format.ACI, path=Path("/out/x.aci"), sha256="b" * 64, size=20, image_id="sha512-" + "f" * 128
)
REPORT = Report(
    dualbuild="0.1.0",
    recipe=Path("/src/recipe.toml"),
    recipe_sha256="0" * 64,
    image=ImageRecord(name="example.com/x", version="1", tags=("latest",), os="linux", arch="arm/v7"),
    source_date_epoch=1700000000,
    artifacts=(DOCKER, ACI),
    signature=Signature(file=Path("/out/x.aci.asc"), signing_key="ABCD"),
    warnings=("a warning",),
    timings={"stages": 1.5, "total": 2.0},
    step_timings=(
        StepTiming(stage="build", step=1, summary="run make", seconds=0.0, cached=True),
        StepTiming(stage="final", step=1, summary="copy a -> /a", seconds=1.25, cached=False),
    ),
    build_key="k" * 64,
    digests=(("/out/x.aci", 1, 2, 3, 4, 5, "b" * 64),),
)


def test_a_report_reads_back_as_it_was_written(tmp_path: Path) -> None:
    published = Published(
        docker=PublishedImage(repository="reg/x", digest="sha256:1", config_digest="sha256:2", tags=("1",)),
        aci=PublishedAci(
            site="/srv",
            aci_url="https://x",
            discovery_name="x:1",
            aci="u",
            signature="s",
            public_key="p",
            page="x/index.html",
            signing_key="ABCD",
        ),
    )
    for report in (
        REPORT,
        replace(REPORT, published=published),
        replace(REPORT, signature=None, build_key=None),
        replace(
            REPORT,
            aci_layers=(
                AciLayer(
                    file=Path("/out/x-layer-1-linux-arm.aci"),
                    version="layer-" + "e" * 64,
                    sha256="9" * 64,
                    size=30,
                    image_id="sha512-" + "8" * 128,
                    signed=True,
                ),
            ),
        ),
    ):
        write_report(tmp_path / "x.report.json", report)
        assert read_report(tmp_path / "x.report.json") == report


def test_the_json_keeps_its_keys_and_their_order() -> None:
    data = report_json(REPORT)
    assert list(data) == [
        "dualbuild",
        "recipe",
        "image",
        "source_date_epoch",
        "artifacts",
        "warnings",
        "timings",
        "step_timings",
        "build_key",
        "digests",
    ]
    assert data["step_timings"] == [
        {"stage": "build", "step": 1, "summary": "run make", "seconds": 0.0, "cached": True},
        {"stage": "final", "step": 1, "summary": "copy a -> /a", "seconds": 1.25, "cached": False},
    ]
    artifacts = data["artifacts"]
    assert isinstance(artifacts, dict)
    assert list(artifacts) == ["docker", "aci"]
    assert list(artifacts["aci"])[-2:] == ["signature", "signing_key"]
    assert "signature" not in artifacts["docker"]
    assert artifacts["docker"]["diff_ids"] == list(DOCKER.diff_ids)
    assert data["digests"] == [["/out/x.aci", 1, 2, 3, 4, 5, "b" * 64]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("image"), "report.image is not an object"),
        (
            lambda d: d.update(step_timings=[{"stage": "s", "step": 1, "summary": "x"}]),
            "seconds is not a number",
        ),
        (lambda d: d.__setitem__("source_date_epoch", "yesterday"), "report.source_date_epoch is not a int"),
        (lambda d: d["artifacts"].__setitem__("rpm", {}), "artifacts.rpm is not a format"),
        (lambda d: d["artifacts"]["docker"].__setitem__("size", True), "report.artifacts.docker.size"),
        (lambda d: d["artifacts"]["aci"].__setitem__("signing_key", None), "signing_key is not a str"),
    ],
)
def test_a_damaged_report_is_a_report_error_naming_what_is_wrong(
    tmp_path: Path, change: object, message: str
) -> None:
    data = report_json(REPORT)
    change(data)  # type: ignore[operator]
    path = tmp_path / "x.report.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=message):
        read_report(path)


def test_not_json_and_not_a_report_are_report_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.report.json"
    path.write_text("{not json")
    with pytest.raises(ReportError, match="cannot read the build report"):
        read_report(path)
    path.write_text("[1]")
    with pytest.raises(ReportError, match="is not a dualbuild report"):
        read_report(path)
    with pytest.raises(FileNotFoundError):
        read_report(tmp_path / "missing.json")


def test_malformed_digest_records_are_dropped_not_fatal(tmp_path: Path) -> None:
    data = report_json(REPORT)
    data["digests"] = [
        ["not", "a", "record"],
        "junk",
        ["/x", 1, 2, 3, 4, True, "d"],
        ["/y", 1, 2, 3, 4, 5, "e"],
    ]
    path = tmp_path / "x.report.json"
    path.write_text(json.dumps(data))
    assert read_report(path).digests == (("/y", 1, 2, 3, 4, 5, "e"),)


def report_of(recipe_file: Path, directory: Path, *, image_id: str) -> Build:
    """A publish ``Build`` of a recipe whose Docker tarball (empty) sits in ``directory``."""
    recipe = load_recipe(recipe_file)
    files = ArtifactFiles.named(directory, "hello-1.0.0-linux-amd64", (Format.DOCKER,), signed=False)
    assert files.docker is not None
    files.docker.write_bytes(b"")
    artifact = replace(DOCKER, path=files.docker, image_id=image_id, config_digest=image_id)
    return Build(recipe=recipe, report=replace(REPORT, artifacts=(artifact,), signature=None), files=files)
