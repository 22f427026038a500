"""What an unlucky release machine or a hostile input meets: clear errors, no false "up to date"."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import dualbuild
from tests.integration.test_build_cli import RECIPE

STEM = "hello-2.0.0-linux-amd64"
UP_TO_DATE = "up to date"


@pytest.fixture
def built(project: Path, cli_env: dict[str, str]) -> Path:
    """A project built once into dist/."""
    (project / "recipe.toml").write_text(RECIPE)
    first = dualbuild(["build", str(project / "recipe.toml")], cli_env)
    assert first.returncode == 0, first.stderr
    return project


@pytest.mark.parametrize(
    "damage",
    [
        lambda out: (out / f"{STEM}.docker.tar").unlink(),
        lambda out: (out / f"{STEM}.oci.tar").write_bytes(b"garbage"),
        lambda out: (out / f"{STEM}.aci.asc").write_text("-----BEGIN PGP SIGNATURE-----\n\ngarbage\n"),
        lambda out: (out / f"{STEM}.aci.asc").unlink(),
    ],
    ids=["docker-missing", "oci-garbage", "signature-damaged", "signature-missing"],
)
def test_a_copied_output_folder_is_up_to_date_only_with_its_own_intact_files(
    built: Path, cli_env: dict[str, str], damage: object
) -> None:
    copy = built / "copy"
    shutil.copytree(built / "dist", copy)
    # The copy's report names the files in dist/: those are intact, the copy's are not.
    assert callable(damage)
    damage(copy)
    again = dualbuild(["build", str(built / "recipe.toml"), "--out", str(copy)], cli_env)
    assert again.returncode == 0, again.stderr
    assert UP_TO_DATE not in again.stderr
    report = json.loads((copy / f"{STEM}.report.json").read_text())
    for artifact in report["artifacts"].values():
        assert Path(artifact["file"]).parent == copy
    verified = dualbuild(["verify", str(copy)], cli_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_intact_copied_folder_is_up_to_date_and_its_report_names_its_own_files(
    built: Path, cli_env: dict[str, str]
) -> None:
    copy = built / "copy"
    shutil.copytree(built / "dist", copy)
    again = dualbuild(["build", str(built / "recipe.toml"), "--out", str(copy)], cli_env)
    assert again.returncode == 0, again.stderr
    assert UP_TO_DATE in again.stderr
    report = json.loads((copy / f"{STEM}.report.json").read_text())
    assert report["artifacts"]["aci"]["file"] == str(copy / f"{STEM}.aci")
    assert report["artifacts"]["aci"]["signature"] == str(copy / f"{STEM}.aci.asc")


def test_an_output_directory_on_a_read_only_file_system_is_a_clear_error(
    project: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        result = dualbuild(["build", str(project / "recipe.toml"), "--out", str(readonly / "dist")], cli_env)
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert result.returncode == 1, result.stderr
    assert f"cannot write to the output directory {readonly}/dist: Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
    assert "[1/2 build]" not in result.stderr  # refused before anything was built


def test_a_fifo_named_like_an_artifact_does_not_block_verify(tmp_path: Path, cli_env: dict[str, str]) -> None:
    os.mkfifo(tmp_path / "x.aci")
    (tmp_path / "x.docker.tar").write_bytes(b"")
    result = dualbuild(["verify", str(tmp_path)], cli_env, timeout=60)
    assert result.returncode == 1
    assert "x.aci is not a regular file (a FIFO)" in result.stdout + result.stderr


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts every connection and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_publish_to_a_registry_that_never_answers_fails_naming_it(
    built: Path, cli_env: dict[str, str], silent_registry: str
) -> None:
    result = dualbuild(
        [
            "publish", str(built / "recipe.toml"), "--docker", f"{silent_registry}/team/hello",
            "--no-tls-verify", "--timeout", "1s",
        ],
        cli_env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert f"{silent_registry}/team/hello" in result.stderr
    assert "retry 3 of 3" in result.stderr  # the bounded retries ran, each bounded by the timeout
    assert "Traceback" not in result.stderr


def test_convert_refuses_an_archive_of_two_images(
    tmp_path: Path, cli_env: dict[str, str], busybox_archives: dict[str, Path]
) -> None:
    """skopeo and buildah read the first manifest.json entry, verify read the last: no archive of two."""
    source = busybox_archives["docker"]
    two = tmp_path / "two.docker.tar"
    with tarfile.open(source) as old, tarfile.open(two, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "manifest.json":
                entries = json.loads(data or b"[]")
                data = json.dumps([*entries, {**entries[0], "RepoTags": ["evil:1"]}]).encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    result = dualbuild(
        ["convert", str(two), "--name", "example.com/two", "--version", "1", "--out", str(tmp_path / "out")],
        cli_env,
    )
    assert result.returncode == 1, result.stderr
    assert "manifest.json lists 2 images; a base must be one" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
