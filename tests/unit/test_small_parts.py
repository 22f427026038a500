"""Small parts with no home of their own elsewhere: log lines, ACI rules, a directory site, results."""

from __future__ import annotations

import gc
import io
import json
import logging
import signal
import tarfile
from pathlib import Path

import pytest

from dualbuild import log, run
from dualbuild.errors import Interrupted
from dualbuild.publish.site import DirSite
from dualbuild.publish.types import AciWritten, DockerPushed, PublishResult
from dualbuild.report import PublishedAci, PublishedImage
from dualbuild.verify.aci import aci_structure


def test_log_lines_carry_their_emitters_prefix_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup(1)
    try:
        with log.prefixed("aci"):
            log.log.warning("lost %s", "a field")
        log.log.error("failed")
        with log.timed("writing") as took:
            pass
        assert took["seconds"] >= 0
        assert capsys.readouterr().err.splitlines() == [
            "[aci] warning: lost a field",
            "error: failed",
            f"writing took {took['seconds']:.2f}s",
        ]
    finally:
        log.setup(0)
    assert log.log.level == logging.INFO


def aci(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


GOOD = {
    "acKind": "ImageManifest",
    "acVersion": "0.8.11",
    "name": "example.com/x",
    "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
    "app": {"exec": ["/x"], "user": "0", "group": "0"},
}


def test_an_aci_keeping_appcs_rules_has_no_problems(tmp_path: Path) -> None:
    path = aci(
        tmp_path / "x.aci", [("manifest", json.dumps(GOOD).encode()), ("rootfs", None), ("rootfs/x", b"x")]
    )
    assert aci_structure(path) == []


def test_what_actool_would_reject_is_named(tmp_path: Path) -> None:
    bad = {**GOOD, "name": "Example.com/X", "app": {"user": "", "environment": [{"name": "1X"}]}}
    bad["labels"] = [{"name": "os", "value": "linux"}, {"name": "arch", "value": "arm64"}]
    path = aci(tmp_path / "x.aci", [("rootfs", None), ("manifest", json.dumps(bad).encode()), ("etc/x", b"")])
    assert aci_structure(path) == [
        "ACI: the first entry is 'rootfs', not 'manifest'",
        "ACI: entry 'etc/x' is outside rootfs/",
        "ACI manifest: name 'Example.com/X' is not an AC Identifier",
        "ACI manifest: arch 'arm64' is not an appc linux arch",
        "ACI manifest: app.user is required (a string)",
        "ACI manifest: app.group is required (a string)",
        "ACI manifest: environment name '1X' is invalid",
    ]


def test_a_directory_site_writes_world_readable_files_and_prunes_what_it_made(tmp_path: Path) -> None:
    source = tmp_path / "x.aci"
    source.write_bytes(b"aci bytes")
    source.chmod(0o600)
    site = DirSite(tmp_path / "site")
    (tmp_path / "site").mkdir()
    site.put("images/example.com/x.aci", source, "application/octet-stream")
    written = tmp_path / "site" / "images" / "example.com" / "x.aci"
    assert written.read_bytes() == b"aci bytes"
    assert written.stat().st_mode & 0o777 == 0o644
    fetched = tmp_path / "fetched"
    assert site.fetch("images/example.com/x.aci", fetched)
    assert not site.fetch("images/none.aci", fetched)
    site.delete("images/example.com/x.aci")
    site.prune()
    assert list((tmp_path / "site").iterdir()) == []


def test_a_publish_result_says_what_was_pushed_and_written() -> None:
    image = PublishedImage(
        repository="reg/x", digest="sha256:1", config_digest="sha256:2", tags=("1", "latest")
    )
    site = PublishedAci(
        site="/srv", aci_url="https://x", discovery_name="x:1,os=linux,arch=amd64", aci="https://x/x.aci",
        signature="https://x/x.aci.asc", public_key="https://x/k.asc", page="x/index.html", signing_key="K",
    )  # fmt: skip
    result = PublishResult(
        report=Path("r.json"),
        dry_run=False,
        docker=DockerPushed(record=image, written=("1",)),
        aci=AciWritten(record=site, written=()),
    )
    assert result.lines() == [
        "reg/x@sha256:1  (1, latest; pushed)",
        "https://x/x.aci  (unchanged)",
        "  signature https://x/x.aci.asc",
        "  key https://x/k.asc",
        "  discovery x:1,os=linux,arch=amd64",
    ]
    assert PublishResult(report=Path("r"), dry_run=True).lines() == ["nothing to publish"]


class _Finalized:
    """Stands for Popen.__del__: the signal handler ran inside a finalizer, which Python ignores."""

    def __del__(self) -> None:
        run._raise_interrupted(signal.SIGTERM, None)


def test_an_interrupt_a_finalizer_swallowed_is_raised_before_the_next_command() -> None:
    with run.interrupts_as_errors():
        _Finalized()
        gc.collect()
        # Before, the build went on: the next command started (here the guard would refuse it).
        with pytest.raises(Interrupted) as interrupted:
            run.run(["true"])
        assert interrupted.value.exit_code == 128 + signal.SIGTERM
        run.check_interrupted()  # raised once, not again


def _swallowed_while_held() -> None:
    with run.deferred_interrupts():
        _Finalized()
        gc.collect()
        run.check_interrupted()  # held: cleanup goes on
    raise AssertionError("the end of the held section raises it")


def test_a_swallowed_interrupt_waits_while_interrupts_are_held() -> None:
    with run.interrupts_as_errors(), pytest.raises(Interrupted):
        _swallowed_while_held()
