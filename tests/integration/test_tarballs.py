"""Checked extraction of rootfs tarballs with GNU tar: what is refused, what tar sees, what is kept."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from dualbuild.builder.tarballs import _feed_checked, extract_checked
from dualbuild.errors import BuildError, ToolNotFoundError
from tests.support import require_root, require_tools

# cap_net_bind_service+ep, VFS_CAP_REVISION_2.
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")

Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes = b"data\n", **fields: object) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def special(name: str, kind: bytes, linkname: str = "", **fields: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    for key, value in fields.items():
        setattr(info, key, value)
    return info, None


def tar_bytes(members: list[Member]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the extraction root that no tarball may write into."""
    directory = tmp_path / "victim"
    directory.mkdir()
    (directory / "passwd").write_text("original\n")
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "root"
    directory.mkdir()
    return directory


def extract(tmp_path: Path, root: Path, members: list[Member], name: str = "rootfs.tar") -> None:
    require_tools("tar")
    tarball = tmp_path / name
    tarball.write_bytes(tar_bytes(members))
    extract_checked(tarball, root, "rootfs tarball")


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([regular("/abs/evil")], "an absolute path"),
        ([regular("ok/../../evil")], "a '..' component"),
        ([special("h", tarfile.LNKTYPE, "/etc/passwd")], "a hardlink to '/etc/passwd' outside the tree"),
        ([special("h", tarfile.LNKTYPE, "a/../../x")], "a hardlink to 'a/../../x' outside the tree"),
    ],
)
def test_escaping_names_are_refused(tmp_path: Path, root: Path, members: list[Member], reason: str) -> None:
    with pytest.raises(BuildError, match="refusing to extract") as caught:
        extract(tmp_path, root, members)
    assert reason in caught.value.message
    assert "rootfs tarball rootfs.tar: entry" in caught.value.message
    assert caught.value.hint == "rebuild the tarball with relative paths (tar -C ROOT -cf OUT.tar .)"


def _through_planted_symlink(victim: Path) -> list[list[Member]]:
    outside = "../" * 20 + str(victim).lstrip("/")
    return [
        # A symlink the archive plants, then an entry written through it.
        [special("evil", tarfile.SYMTYPE, str(victim)), regular("evil/passwd", b"pwned\n")],
        [special("evil", tarfile.SYMTYPE, outside), regular("evil/passwd")],
        [regular("sub/keep"), special("sub/evil", tarfile.SYMTYPE, str(victim)), regular("sub/evil/passwd")],
        [special("evil", tarfile.SYMTYPE, str(victim)), regular("./evil//passwd")],
        # A hardlink to a file reached through it: writing the link would write the victim.
        [special("evil", tarfile.SYMTYPE, str(victim)), special("h", tarfile.LNKTYPE, "evil/passwd")],
        # Replacing the symlink by a directory does not make what follows safe.
        [
            special("evil", tarfile.SYMTYPE, str(victim)),
            special("evil", tarfile.DIRTYPE),
            regular("evil/passwd"),
        ],
    ]


@pytest.mark.parametrize("case", range(6))
def test_entries_through_a_planted_symlink_are_refused(
    tmp_path: Path, root: Path, victim: Path, case: int
) -> None:
    with pytest.raises(BuildError, match="refusing to extract") as caught:
        extract(tmp_path, root, _through_planted_symlink(victim)[case])
    assert "which may point outside the tree" in caught.value.message
    assert (victim / "passwd").read_text() == "original\n"
    assert sorted(p.name for p in victim.iterdir()) == ["passwd"]


def test_gnu_tar_refuses_what_the_check_lets_through(tmp_path: Path, root: Path, victim: Path) -> None:
    # `a` is a harmless relative symlink, but it leads to `b`, which points outside: GNU tar
    # makes such symlinks only after every other entry, so writing through `a` fails.
    members = [
        special("a", tarfile.SYMTYPE, "b"),
        special("b", tarfile.SYMTYPE, str(victim)),
        regular("a/passwd", b"pwned\n"),
    ]
    with pytest.raises(BuildError, match=r"rootfs tarball rootfs\.tar: extracting it failed") as caught:
        extract(tmp_path, root, members)
    assert "Not a directory" in caught.value.message
    assert (victim / "passwd").read_text() == "original\n"


def test_tar_gets_no_byte_of_a_refused_entry(tmp_path: Path) -> None:
    # Large enough that tarfile reads the bad entry's header in the same chunk as the good one.
    good = [regular(f"ok{n}", b"x" * 100) for n in range(3)]
    data = tar_bytes([*good, regular("/abs/evil", b"evil" * 100)])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        bad_header = archive.getmembers()[-1].offset
    tarball = tmp_path / "bad.tar"
    tarball.write_bytes(data)
    sink = io.BytesIO()
    with pytest.raises(BuildError, match="refusing to extract"):
        _feed_checked(tarball, sink, "rootfs tarball")
    assert sink.getvalue() == data[:bad_header]


def test_what_follows_the_end_of_the_archive_is_not_extracted(tmp_path: Path, root: Path) -> None:
    # tarfile stops at the first zero block, so what follows was never checked.
    require_tools("tar")
    tarball = tmp_path / "concatenated.tar"
    tarball.write_bytes(tar_bytes([regular("ok")]) + tar_bytes([regular("/abs/hidden")]))
    extract_checked(tarball, root, "rootfs tarball")
    assert sorted(p.name for p in root.iterdir()) == ["ok"]


def test_truncated_tarball_is_a_clear_error(tmp_path: Path, root: Path) -> None:
    tarball = tmp_path / "broken.tar"
    tarball.write_bytes(tar_bytes([regular("big", b"x" * 4096)])[:1024])
    with pytest.raises(BuildError, match=r"rootfs tarball broken\.tar cannot be read"):
        extract_checked(tarball, root, "rootfs tarball")


def test_damaged_header_is_a_clear_error_not_the_end(tmp_path: Path, root: Path) -> None:
    # tarfile ends the archive silently at a header with a bad checksum.
    data = bytearray(tar_bytes([regular("ok"), regular("second")]))
    data[1024] ^= 0xFF  # the second header's name
    tarball = tmp_path / "damaged.tar"
    tarball.write_bytes(data)
    with pytest.raises(BuildError, match="cannot be read: a damaged entry header at byte 1024"):
        extract_checked(tarball, root, "rootfs tarball")


def rich_members() -> list[Member]:
    return [
        special("etc", tarfile.DIRTYPE, mode=0o755),
        regular("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mode=0o644, mtime=1_600_000_000),
        regular("bin-suid", b"setuid", mode=0o4755, uid=1234, gid=5678),
        special("sgid-dir", tarfile.DIRTYPE, mode=0o2775, uid=42, gid=43),
        special("tmp", tarfile.DIRTYPE, mode=0o1777),
        regular("file", b"hello\n", mode=0o640, uid=1000, gid=1001),
        special("hard", tarfile.LNKTYPE, "file", mode=0o640, uid=1000, gid=1001),
        special("link", tarfile.SYMTYPE, "/etc/passwd"),
        special("null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        regular(
            "ping",
            b"cap",
            mode=0o755,
            pax_headers={
                "SCHILY.xattr.security.capability": os.fsdecode(CAPABILITY),
                "SCHILY.xattr.user.origin": "tarball",
            },
        ),
    ]


def describe(root: Path) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(directory) / name
            info = path.lstat()
            xattrs = {
                key: os.getxattr(path, key, follow_symlinks=False)
                for key in os.listxattr(path, follow_symlinks=False)
            }
            target = os.readlink(path) if path.is_symlink() else ""
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            rows.append((
                str(path.relative_to(root)), stat.filemode(info.st_mode), info.st_uid, info.st_gid,
                info.st_rdev, info.st_nlink, target, sorted(xattrs.items()), content,
            ))  # fmt: skip
    return sorted(rows)


def test_owners_modes_devices_hardlinks_and_xattrs_are_kept(tmp_path: Path, root: Path) -> None:
    require_root()
    extract(tmp_path, root, rich_members())
    rows = {row[0]: row for row in describe(root)}
    assert rows["bin-suid"][1:4] == ("-rwsr-xr-x", 1234, 5678)
    assert rows["sgid-dir"][1:4] == ("drwxrwsr-x", 42, 43)
    assert rows["tmp"][1] == "drwxrwxrwt"
    assert rows["file"][2:4] == (1000, 1001)
    assert (root / "file").stat().st_ino == (root / "hard").stat().st_ino
    assert rows["link"][6] == "/etc/passwd"  # made at the end, pointing where the archive says
    assert rows["null"][1] == "crw-rw-rw-"
    device = (root / "null").lstat().st_rdev
    assert (os.major(device), os.minor(device)) == (1, 3)
    assert os.getxattr(root / "ping", "security.capability") == CAPABILITY
    assert os.getxattr(root / "ping", "user.origin") == b"tarball"
    assert (root / "etc/passwd").stat().st_mtime == 1_600_000_000


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz", "zstd"])
def test_every_compression_gives_the_same_tree(tmp_path: Path, compression: str) -> None:
    require_root()
    data = tar_bytes(rich_members())
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    (tmp_path / "rootfs.tar").write_bytes(data)
    extract_checked(tmp_path / "rootfs.tar", plain, "rootfs tarball")
    if compression == "zstd":
        require_tools("zstd")
        subprocess.run(
            ["zstd", "-q", str(tmp_path / "rootfs.tar"), "-o", str(tmp_path / "rootfs.tar.zst")], check=True
        )
        tarball = tmp_path / "rootfs.tar.zst"
    else:
        compress = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[compression]
        tarball = tmp_path / "rootfs.tar.compressed"  # found by its content, not its name
        tarball.write_bytes(compress(data))
    extract_checked(tarball, packed, "rootfs tarball")
    assert describe(packed) == describe(plain)


def test_missing_tar_is_named(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    (tmp_path / "rootfs.tar").write_bytes(tar_bytes([regular("ok")]))
    with pytest.raises(
        ToolNotFoundError, match="could not find 'tar', which is required to extract the rootfs"
    ):
        extract_checked(tmp_path / "rootfs.tar", root, "rootfs tarball")
