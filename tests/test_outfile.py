"""Artifact files: atomic, durable, and handed to the disk while they are written."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from dualbuild import files as outfile


def test_a_file_written_slowly_is_on_disk_before_its_final_fsync(tmp_path: Path) -> None:
    # 96 MiB at ~120 MiB/s: the writeback thread flushes as it goes, so an fsync at the end
    # has next to nothing left. The same bytes written at once and fsynced are the baseline.
    chunk = os.urandom(1 << 20)
    baseline_file = tmp_path / "baseline"
    with baseline_file.open("wb") as file:
        for _ in range(96):
            file.write(chunk)
        file.flush()
        start = time.perf_counter()
        os.fsync(file.fileno())
        baseline = time.perf_counter() - start
    baseline_file.unlink()
    dest = tmp_path / "image.aci"
    with outfile.atomic_output(dest) as file:
        for _ in range(96):
            file.write(chunk)
            file.flush()
            time.sleep(0.008)
        time.sleep(0.2)  # a few writeback periods after the last write
        start = time.perf_counter()
        os.fsync(file.fileno())
        final_fsync = time.perf_counter() - start
    assert dest.stat().st_size == 96 << 20
    assert final_fsync < baseline / 2, (final_fsync, baseline)


def test_a_flush_error_in_the_writeback_thread_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def emit() -> None:
        with outfile.atomic_output(tmp_path / "image.aci") as file:
            file.write(b"x")
            time.sleep(0.2)

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        emit()
    assert list(tmp_path.iterdir()) == []


def test_the_file_appears_whole_and_the_writeback_thread_is_gone(tmp_path: Path) -> None:
    dest = tmp_path / "image.aci"
    with outfile.atomic_output(dest) as file:
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
        with outfile.atomic_output(dest) as file:
            file.write(b"half")
            raise RuntimeError("emitter failed")

    with pytest.raises(RuntimeError, match="emitter failed"):
        failing_emit()
    assert list(tmp_path.iterdir()) == []
    assert not any(thread.name == "emit-writeback" for thread in threading.enumerate())
