"""What tests of both kinds share: requirements that skip locally but fail under CI, and trees."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
SDE = 1_700_000_000
# cap_net_bind_service+ep, VFS_CAP_REVISION_2 (what `setcap cap_net_bind_service+ep` writes).
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
LONG_PATH = "d" * 60 + "/" + "e" * 60 + "/" + "f" * 78  # 200 characters
NON_UTF8 = b"caf\xe9"
# Bounds a wait that only a hang exceeds: a loaded 2-core machine may take many times the
# usual, and a test's verdict must not depend on that. Never a measure of speed.
HANG_SECONDS = 300


def require(condition: bool, reason: str) -> None:
    """Skip a test whose requirement is missing; under CI a missing requirement is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    """Require external programs on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    require(not missing, f"missing tools: {', '.join(missing)} (run `make setup` as root)")


def require_root() -> None:
    """Require running as root (buildah, docker and device nodes need it here)."""
    require(os.geteuid() == 0, "needs root")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Wait for ``process`` to accept connections on 127.0.0.1:``port``; False if it exited first."""
    deadline = time.monotonic() + HANG_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=HANG_SECONDS).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def supports_user_xattrs(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        probe.unlink()
    return True


def build_rich_tree(root: Path, *, privileged: bool) -> Path:
    """A tree holding every entry kind the emitters must carry.

    ``privileged`` adds what needs root: a char device and a security.capability xattr.
    """
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1001:\nstaff:x:50:\n")
    (root / "empty").mkdir()
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin/tool").chmod(0o755)
    (root / "bin/suid").write_bytes(b"setuid program")
    (root / "bin/suid").chmod(0o4755)
    (root / "bin/sgid-dir").mkdir()
    (root / "bin/sgid-dir").chmod(0o2775)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "data.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB: the chunked path
    (root / "file").write_text("hello\n")
    os.link(root / "file", root / "hard")
    os.symlink("file", root / "link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.mkfifo(root / "fifo")
    (root / "owned").write_text("owned")
    if os.geteuid() == 0:
        os.chown(root / "owned", 1000, 1001)
    long_file = root / LONG_PATH
    long_file.parent.mkdir(parents=True)
    long_file.write_text("long path\n")
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as file:
        file.write(b"not utf-8\n")
    if supports_user_xattrs(root):
        os.setxattr(root / "file", "user.comment", b"\xff\x00binary")
        os.setxattr(root / "empty", "user.dir", b"on a directory")
    if privileged:
        (root / "bin/ping").write_bytes(b"needs a capability")
        (root / "bin/ping").chmod(0o755)
        os.setxattr(root / "bin/ping", "security.capability", CAPABILITY)
        (root / "devices").mkdir()
        os.mknod(root / "devices/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fspath(root / "control.sock"))
    finally:
        sock.close()
    return root


def extract_trusted(archive: tarfile.TarFile, destination: Path) -> None:
    """Extract one of the tests' own archives (absolute symlinks intended) on every Python claimed.

    Extraction filters came with Python 3.11.4 (Debian 12 has 3.11.2); from 3.12 on, extracting
    without one warns.
    """
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    archive.extractall(destination, **trusted)  # type: ignore[arg-type]
