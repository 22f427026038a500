"""An output directory that cannot be written fails the build before anything runs (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualbuild import pipeline
from dualbuild.builder.stages import BuildOptions
from dualbuild.errors import BuildError
from dualbuild.pipeline import BuildRequest, build
from dualbuild.settings import Overrides
from tests.unit.conftest import FakeRun

RECIPE = '[image]\nname = "example.com/t"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n'


def test_an_output_directory_below_a_file_is_a_clear_error_before_the_build(
    fake_run: FakeRun, tmp_path: Path
) -> None:
    (tmp_path / "recipe.toml").write_text(RECIPE)
    (tmp_path / "a-file").write_text("")
    request = BuildRequest(
        recipe=tmp_path / "recipe.toml", sign=False,
        overrides=Overrides(out_dir=tmp_path / "a-file" / "dist"), options=BuildOptions(),
        environ={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    with pytest.raises(BuildError) as caught:
        build(request)
    assert caught.value.exit_code == 1
    assert str(caught.value) == (
        f"cannot write to the output directory {tmp_path}/a-file/dist: {tmp_path}/a-file is not a directory"
    )
    assert fake_run.calls == []  # nothing was started
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "recipe.toml"]


def _fake_build(tmp_path: Path, mounted: Path) -> BuildRequest:
    (mounted / "hello").write_text("hi")
    (tmp_path / "recipe.toml").write_text(RECIPE + '[output]\nformats = ["docker", "oci"]\n')
    return BuildRequest(
        recipe=tmp_path / "recipe.toml", sign=False, options=BuildOptions(cache=False),
        environ={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip


def test_a_report_that_cannot_be_written_leaves_the_last_set_as_it_was(
    tmp_path: Path, mounted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _fake_build(tmp_path, mounted)
    build(request)
    dist = tmp_path / "dist"
    before = {path.name: path.read_bytes() for path in dist.iterdir()}
    assert sorted(before) == [
        "t-1-linux-amd64.docker.tar",
        "t-1-linux-amd64.oci.tar",
        "t-1-linux-amd64.report.json",
    ]
    (mounted / "hello").write_text("changed")

    def full_disk(path: Path, _report: object) -> None:
        raise BuildError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(pipeline, "write_report", full_disk)
    with pytest.raises(BuildError, match="No space left on device") as caught:
        build(request)
    assert caught.value.exit_code == 1
    assert {
        path.name: path.read_bytes() for path in dist.iterdir()
    } == before  # nothing replaced, nothing left


def test_the_old_report_is_gone_before_the_first_artifact_is_replaced(
    tmp_path: Path, mounted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _fake_build(tmp_path, mounted)
    build(request)
    report = tmp_path / "dist" / "t-1-linux-amd64.report.json"
    seen: list[bool] = []
    replace = Path.replace

    def watched(self: Path, target: Path) -> Path:
        if Path(target).suffix == ".tar":
            seen.append(report.exists())  # a SIGKILL here must not leave the old report
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", watched)
    (mounted / "hello").write_text("changed")
    build(request)
    assert seen == [False, False]
    assert report.exists()
