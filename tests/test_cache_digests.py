"""Digests remembered by file stamp: what lets an unchanged rebuild skip hashing big files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dualbuild.build.cache import file_sha256, file_stamp, known_digests, remember_digests

MIB = 1 << 20


def records_for(path: Path) -> list[list[object]]:
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
    remember_digests([[os.fspath(big.absolute()), *stamp, "f" * 64]])
    assert file_sha256(big) == "f" * 64  # taken from the report: no read
    os.utime(big, ns=(stamp[3] + 1, stamp[3] + 1))
    assert file_sha256(big) == hashlib.sha256(b"c" * MIB).hexdigest()
    remember_digests([["not", "a", "record"], "junk", [os.fspath(big), 1, 2, 3, 4, 5, 6]])
    assert file_sha256(big) == hashlib.sha256(b"c" * MIB).hexdigest()


def test_small_files_are_not_written_to_the_report(tmp_path: Path) -> None:
    small = tmp_path / "recipe.toml"
    small.write_text("[image]\n")
    file_sha256(small)
    assert records_for(small) == []
