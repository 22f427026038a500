"""Artifact files: atomic, durable, and handed to the disk while they are written."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

import pytest

from dualbuild import outfile


def test_sync_file_range_is_bound_with_64_bit_offsets(tmp_path: Path) -> None:
    start_writeback = outfile._sync_file_range()
    assert start_writeback is not None  # Linux with glibc, as on every supported host
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * (3 << 20))
        assert start_writeback(fd, 0, 0, outfile._SYNC_FILE_RANGE_WRITE) == 0
        # An offset past 4 GiB reaches the kernel intact (a 32-bit argument would wrap it).
        assert start_writeback(fd, 5 << 30, 4096, outfile._SYNC_FILE_RANGE_WRITE) == 0
        assert start_writeback(fd, -1, 0, outfile._SYNC_FILE_RANGE_WRITE) == -1
        assert ctypes.get_errno() == errno.EINVAL
    finally:
        os.close(fd)


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
