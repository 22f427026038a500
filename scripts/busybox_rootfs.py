#!/usr/bin/env python3
"""Write a small busybox root filesystem tarball from Debian's busybox-static, reproducibly.

Used by `make demo` (recipes/hello builds on it) and by the tests, so that nothing needs an
internet registry. Usage: busybox_rootfs.py OUT.tar
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"
DIRS = ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "sbin", "var")


def find_busybox() -> Path:
    """The static busybox binary (package busybox-static)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.exists():
            return path
    found = shutil.which("busybox")
    if not found:
        sys.exit("busybox not found: install the busybox-static package")
    return Path(found)


def applets(busybox: Path) -> list[str]:
    """Install paths of every applet, e.g. ``/bin/sh``."""
    result = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True)
    return sorted(line.strip() for line in result.stdout.splitlines() if line.strip())


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def write_rootfs(out: Path) -> None:
    """Write the tarball atomically."""
    busybox = find_busybox()
    temporary = out.with_name(out.name + ".tmp")
    with tarfile.open(temporary, "w", format=tarfile.GNU_FORMAT) as tar:
        for directory in DIRS:
            mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(_info(directory, tarfile.DIRTYPE, mode))
        data = busybox.read_bytes()
        tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for path in applets(busybox):
            if path.strip("/") != "bin/busybox":
                tar.addfile(_info(path.lstrip("/"), tarfile.SYMTYPE, 0o777, link="/bin/busybox"))
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            raw = text.encode()
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(raw)), io.BytesIO(raw))
    temporary.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write_rootfs(Path(sys.argv[1]))
