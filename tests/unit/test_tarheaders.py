"""The held base's tar reader gives what tarfile gives, for every format images are made of."""

from __future__ import annotations

import io
import tarfile

import pytest

from dualbuild.builder.tarheaders import Unread, headers

FIELDS = ("name", "type", "mode", "uid", "gid", "size", "linkname", "devmajor", "devminor", "offset_data")


def archive(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: object) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime = kind, len(data), 1_700_000_000
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("./", tarfile.DIRTYPE, mode=0o755)
        add("./etc/", tarfile.DIRTYPE, mode=0o755)
        add("./etc/motd", data=b"hello\n", mode=0o644, uid=1000, gid=1000)
        add("./etc/" + "long-" * 40 + "name", data=b"x" * 1000)
        add("./etc/link", tarfile.SYMTYPE, linkname="/usr/" + "deep/" * 30 + "target")
        add("./etc/hard", tarfile.LNKTYPE, linkname="etc/motd")
        add("./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add("./big-id", data=b"y", uid=3_000_000, gid=3_000_000)
        add("./fifo", tarfile.FIFOTYPE, mode=0o600)
        if fmt == tarfile.PAX_FORMAT:
            info = tarfile.TarInfo("./café")
            info.pax_headers = {"SCHILY.xattr.user.note": "kept", "comment": "ignored"}
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_field_is_what_tarfile_reads(fmt: int) -> None:
    data = archive(fmt) if fmt != tarfile.USTAR_FORMAT else _ustar_only()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = tar.getmembers()
    found = list(headers(io.BufferedReader(io.BytesIO(data))))  # type: ignore[arg-type]
    assert [tuple(getattr(m, f) for f in FIELDS) for m in found] == [
        tuple(getattr(m, f) for f in FIELDS) for m in expected
    ]
    assert [int(m.mtime) for m in found] == [int(m.mtime) for m in expected]
    assert [m.pax_headers.get("SCHILY.xattr.user.note") for m in found] == [
        m.pax_headers.get("SCHILY.xattr.user.note") for m in expected
    ]


def _ustar_only() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("a/", "a/" + "b" * 90 + "/" + "c" * 90):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            tar.addfile(info)
    return out.getvalue()


def test_damaged_and_unusual_tars_are_left_to_tarfile() -> None:
    data = bytearray(archive(tarfile.GNU_FORMAT))
    data[1200] ^= 0xFF  # inside the second header
    with pytest.raises(Unread, match="damaged"):
        list(headers(io.BufferedReader(io.BytesIO(bytes(data)))))  # type: ignore[arg-type]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"x": "1"}) as tar:
        tar.addfile(tarfile.TarInfo("a"))
    with pytest.raises(Unread, match="global"):
        list(headers(io.BufferedReader(io.BytesIO(out.getvalue()))))  # type: ignore[arg-type]


def test_a_number_field_that_is_not_one_is_left_to_tarfile() -> None:
    data = bytearray(_ustar_only())
    data[100:108] = b"zzzzzzz\0"  # the first entry's mode
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + 8 * 32 + sum(data[156:512]))
    with pytest.raises(Unread, match="damaged header"):
        list(headers(io.BufferedReader(io.BytesIO(bytes(data)))))  # type: ignore[arg-type]
