"""Files: digests remembered by stamp; writes that are atomic, durable, and never half done."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from dualbuild import files
from dualbuild.files import (
    atomic_path,
    file_sha256,
    file_stamp,
    known_digests,
    remember_digests,
    write_atomically,
)
from tests.support import HANG_SECONDS


def test_a_file_being_written_is_flushed_to_the_disk_before_it_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writeback thread hands the file to the disk while it is written, so the final fsync
    # finds little left. Waited for with an event, not timed: a busy machine only delays it.
    flushed = threading.Event()
    real = os.fdatasync

    def counting(fd: int) -> None:
        real(fd)
        flushed.set()

    monkeypatch.setattr(os, "fdatasync", counting)
    dest = tmp_path / "image.aci"
    with files.atomic_output(dest) as file:
        file.write(os.urandom(4 << 20))
        file.flush()
        assert flushed.wait(timeout=HANG_SECONDS), "the writeback thread never flushed the file"
        assert not dest.exists()
    assert dest.stat().st_size == 4 << 20


def test_a_flush_error_in_the_writeback_thread_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The block ends only once the writeback thread has met the error: the final fsync does
    # not report it again, so the error must come from the thread, however late it runs.
    failed = threading.Event()

    def failing(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    def emit() -> None:
        with files.atomic_output(tmp_path / "image.aci") as file:
            file.write(b"x")
            assert failed.wait(timeout=HANG_SECONDS), "the writeback thread never flushed the file"

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        emit()
    assert list(tmp_path.iterdir()) == []


def test_the_file_appears_whole_and_the_writeback_thread_is_gone(tmp_path: Path) -> None:
    dest = tmp_path / "image.aci"
    with files.atomic_output(dest) as file:
        for _ in range(8):
            file.write(os.urandom(1 << 20))
        assert not dest.exists()
        assert any(thread.name == "emit-writeback" for thread in threading.enumerate())
    assert dest.stat().st_size == 8 << 20
    assert [p.name for p in tmp_path.iterdir()] == ["image.aci"]
    assert not any(thread.name == "emit-writeback" for thread in threading.enumerate())


def test_a_failed_write_leaves_no_file_and_no_thread(tmp_path: Path) -> None:
    dest = tmp_path / "image.docker.tar"

    def failing_emit() -> None:
        with files.atomic_output(dest) as file:
            file.write(b"half")
            raise RuntimeError("emitter failed")

    with pytest.raises(RuntimeError, match="emitter failed"):
        failing_emit()
    assert list(tmp_path.iterdir()) == []
    assert not any(thread.name == "emit-writeback" for thread in threading.enumerate())


# --- digests remembered by file stamp: what lets an unchanged rebuild skip hashing big files ----

MIB = 1 << 20


def records_for(path: Path) -> list[tuple[object, ...]]:
    return [record for record in known_digests() if record[0] == os.fspath(path.absolute())]


def test_a_changed_file_is_hashed_again_and_only_its_current_digest_is_kept(tmp_path: Path) -> None:
    big = tmp_path / "base.tar"
    big.write_bytes(b"a" * (2 * MIB))
    assert file_sha256(big) == hashlib.sha256(b"a" * (2 * MIB)).hexdigest()
    assert [record[-1] for record in records_for(big)] == [file_sha256(big)]
    big.write_bytes(b"b" * (2 * MIB))  # same size; the stamp (mtime, ctime) moves
    assert file_sha256(big) == hashlib.sha256(b"b" * (2 * MIB)).hexdigest()
    assert [record[-1] for record in records_for(big)] == [hashlib.sha256(b"b" * (2 * MIB)).hexdigest()]
    big.unlink()
    assert records_for(big) == []


def test_a_remembered_digest_is_trusted_only_for_its_stamp(tmp_path: Path) -> None:
    big = tmp_path / "artifact.aci"
    big.write_bytes(b"c" * MIB)
    stamp = file_stamp(big)
    remember_digests(((os.fspath(big.absolute()), *stamp, "f" * 64),))
    assert file_sha256(big) == "f" * 64  # taken from the report: no read
    os.utime(big, ns=(stamp[3] + 1, stamp[3] + 1))
    assert file_sha256(big) == hashlib.sha256(b"c" * MIB).hexdigest()


def test_small_files_are_not_written_to_the_report(tmp_path: Path) -> None:
    small = tmp_path / "recipe.toml"
    small.write_text("[image]\n")
    file_sha256(small)
    assert records_for(small) == []


# --- atomic writes ---------------------------------------------------------------------------


def test_a_small_file_is_replaced_whole_with_the_mode_asked(tmp_path: Path) -> None:
    dest = tmp_path / "report.json"
    dest.write_text("old")
    write_atomically(dest, b"new", mode=0o640)
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    dest = tmp_path / "report.json"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, files.temporary_name(dest))
    write_atomically(dest, b"new")
    assert victim.read_text() == "keep"
    assert dest.read_bytes() == b"new"


def test_a_tool_writes_at_the_temporary_path_and_a_failure_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "base.tar"
    with atomic_path(dest) as partial:
        assert partial.name == f".tmp-{os.getpid()}-base.tar"
        partial.write_bytes(b"tarball")
    assert dest.read_bytes() == b"tarball"

    def failing_tool() -> None:
        with atomic_path(tmp_path / "other.tar") as partial:
            partial.write_bytes(b"half")
            raise RuntimeError("mmdebstrap failed")

    with pytest.raises(RuntimeError):
        failing_tool()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.tar"]
