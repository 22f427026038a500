"""Archives from outside: recognised by their bytes, read as streams, the ACI manifest found."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dualbuild.archive import decompressed, decompressed_stream, read_aci_manifest
from dualbuild.errors import BuildError

PAYLOAD = b"the same bytes\n" * 1000


@pytest.mark.parametrize(
    "compress",
    [lambda d: d, gzip.compress, bz2.compress, lzma.compress],
    ids=["plain", "gzip", "bzip2", "xz"],
)
def test_every_compression_is_recognised_by_its_bytes_not_its_name(
    tmp_path: Path, compress: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "misnamed.tar"
    path.write_bytes(compress(PAYLOAD))
    with decompressed(path) as stream:
        assert stream.read() == PAYLOAD
    assert decompressed_stream(io.BytesIO(compress(PAYLOAD))).read() == PAYLOAD


def aci(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_the_manifest_is_read_wherever_it_stands(tmp_path: Path) -> None:
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/x"}
    first = aci(tmp_path / "a.aci", {"manifest": json.dumps(manifest).encode(), "rootfs/x": b"x"})
    last = aci(tmp_path / "b.aci", {"rootfs/x": b"x", "manifest": json.dumps(manifest).encode()})
    assert read_aci_manifest(first) == manifest
    assert read_aci_manifest(last) == manifest


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"rootfs/x": b"x"}, "no image manifest found"),
        ({"manifest": b"{not json"}, "the manifest is not JSON"),
        ({"manifest": b'{"acKind": "PodManifest"}'}, "no image manifest found"),
    ],
)
def test_an_aci_without_an_image_manifest_is_a_build_error(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        read_aci_manifest(aci(tmp_path / "x.aci", members))


def test_a_file_that_is_not_an_archive_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "x.aci").write_bytes(b"\x1f\x8b\x08 but truncated")
    with pytest.raises(BuildError, match=r"x\.aci cannot be read"):
        read_aci_manifest(tmp_path / "x.aci")
