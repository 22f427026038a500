"""Reading archives from outside: one decompression sniffer, tar streams, the ACI manifest.

Bases (rootfs tarballs, ACIs, docker-archives), the artifacts ``verify`` reads back and the
two builds ``--check-reproducible`` compares are all read here, as streams: nothing is read
whole into memory, and a compressed file is recognised by its magic bytes, not its name.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

from dualbuild import run
from dualbuild.errors import BuildError

DOCKER_ARCHIVE = "docker-archive"

_GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGICS = (b"\xfd7zXZ\x00", b"\x5d\x00\x00\x80")
ACI_MANIFEST = "manifest"


def _is_bzip2(magic: bytes) -> bool:
    # The signature tarfile's "r|*" recognises, at any block size.
    return magic.startswith(b"BZh") and magic[4:10] == b"1AY&SY"


def decompressed_stream(stream: IO[bytes]) -> IO[bytes]:
    """A seekable stream, uncompressed if it is gzip, bzip2 or xz (else the stream itself)."""
    magic = stream.read(10)
    stream.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if _is_bzip2(magic):
        return bz2.BZ2File(stream, mode="rb")
    if magic.startswith(_XZ_MAGICS):
        return lzma.LZMAFile(stream, mode="rb")
    return stream


def is_compressed(path: Path) -> bool:
    """Whether the file is gzip, bzip2, xz or zstd (what :func:`decompressed` decompresses).

    Raises:
        OSError: it cannot be read.
    """
    with path.open("rb") as raw:
        magic = raw.read(10)
    return is_compressed_magic(magic) or path.name.endswith((".zst", ".zstd"))


def is_compressed_magic(magic: bytes) -> bool:
    """Whether data starting with these (at least 10) bytes is gzip, bzip2, xz or zstd."""
    return magic.startswith((_GZIP_MAGIC, ZSTD_MAGIC, *_XZ_MAGICS)) or _is_bzip2(magic)


@contextmanager
def decompressed(path: Path) -> Iterator[IO[bytes]]:
    """The uncompressed bytes of a file (plain, gzip, bzip2, xz or zstd), as a stream.

    Raises:
        CommandError: zstd failed (when leaving the block).
        ToolNotFoundError: the file is zstd-compressed and zstd is missing.
    """
    with path.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(ZSTD_MAGIC) or path.name.endswith((".zst", ".zstd")):
            with run.stream_stdout([run.find_tool("zstd", "read .zst"), "-dc", path]) as stream:
                yield stream
            return
        with decompressed_stream(raw) as stream:
            yield stream


@contextmanager
def open_tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Read a tarball (plain, gzip, bzip2, xz or zstd) as a stream, never all at once."""
    with decompressed(path) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
        yield archive


def parse_aci_manifest(data: bytes, where: str) -> dict[str, object]:
    """An ACI's image manifest from the bytes of its ``manifest`` entry.

    Raises:
        BuildError: it is not JSON, or not an image manifest.
    """
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise BuildError(f"ACI {where}: the manifest is not JSON ({error})") from None
    except RecursionError:
        raise BuildError(f"ACI {where}: the manifest nests too deeply to read") from None
    if not isinstance(manifest, dict) or manifest.get("acKind") != "ImageManifest":
        raise BuildError(f"ACI {where}: no image manifest found")
    return manifest


def read_aci_manifest(aci: Path) -> dict[str, object]:
    """The image manifest of an ACI, reading only up to it (appc puts it first).

    Raises:
        BuildError: the ACI cannot be read, or has no image manifest.
    """
    try:
        with open_tar_stream(aci) as archive:
            for member in archive:
                if member.name.rstrip("/") == ACI_MANIFEST and member.isfile():
                    content = archive.extractfile(member)
                    return parse_aci_manifest(content.read() if content else b"", aci.name)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise BuildError(f"ACI {aci.name} cannot be read: {error}") from None
    raise BuildError(f"ACI {aci.name}: no image manifest found")


def check_one_image(archive: Path, kind: str) -> None:
    """An image archive (``kind``: docker-archive or oci-archive) must hold one image, and its views agree.

    Readers differ on an archive of several: skopeo, podman and buildah take the first
    manifest.json entry, others the last. A docker-archive that is also an OCI layout (what
    dualbuild and ``docker save`` write) must name the same config in both views.

    Raises:
        BuildError: it holds another number of images, or its views disagree (naming both).
    """
    try:
        with tarfile.open(archive) as outer:
            documents = {name: _json_member(outer, name) for name in ("manifest.json", "index.json")}
            index = documents["index.json"]
            descriptors = index.get("manifests") if isinstance(index, dict) else None
            manifests = {str(d.get("digest")) for d in descriptors or [] if isinstance(d, dict)}
            config_of_index = None
            if len(manifests) == 1:
                manifest = _json_member(
                    outer, "blobs/sha256/" + next(iter(manifests)).removeprefix("sha256:")
                )
                config = manifest.get("config") if isinstance(manifest, dict) else None
                config_of_index = str(config.get("digest", "")) if isinstance(config, dict) else None
    except (OSError, tarfile.TarError, ValueError, RecursionError) as error:
        raise BuildError(f"{kind} {archive.name}: cannot be read ({error})") from None
    listed = documents["manifest.json"]
    entries: list[object] = listed if isinstance(listed, list) else []
    if kind == DOCKER_ARCHIVE:
        count = len(entries)
        if count != 1:
            raise BuildError(
                f"docker-archive {archive.name}: manifest.json lists {count} images; a base must be one",
                hint="save the one image you mean (docker save IMAGE) and use that archive",
            )
        first = entries[0]
        config_path = first.get("Config") if isinstance(first, dict) else None
        if config_of_index is not None and not str(config_path).endswith(
            config_of_index.removeprefix("sha256:")
        ):
            raise BuildError(
                f"docker-archive {archive.name}: manifest.json names config {config_path}, but index.json's "
                f"image has config {config_of_index}: the two views of the archive disagree"
            )
    elif len(manifests) != 1:
        raise BuildError(
            f"oci-archive {archive.name}: index.json names {len(manifests)} images; a base must be one",
            hint="export the one image you mean into an archive of its own",
        )


def _json_member(outer: tarfile.TarFile, name: str) -> object:
    try:
        member = outer.extractfile(name)
    except KeyError:
        return None
    return json.loads(member.read()) if member is not None else None
