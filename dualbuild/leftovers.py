"""What a dualbuild process killed with SIGKILL left behind, found by its PID and reclaimed.

Every scratch file or folder dualbuild makes says whose it is: temporary folders are
``dualbuild-KIND-PID-…`` (dualbuild.files.scratch_directory), a build's staging folder in
the output directory is ``.dualbuild-PID``, a file being written is ``.tmp-PID-NAME``
(dualbuild.files.temporary_name). A process that is killed cannot remove them, and nobody
else would; the next build (and ``dualbuild cache prune``) removes those whose process is
gone, and only those: scratch folders in the temporary folders, staging folders and partial
files only where dualbuild writes outputs. A dead process's temporary keyring may still have
its gpg-agent running: it is stopped first; a temporary buildah store has its overlay
unmounted first. (buildah's own containers of a dead build are reclaimed in
dualbuild.builder.buildah.)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dualbuild import run
from dualbuild.log import log

# Whose a name is: the PID after the prefix. Scratch folders, anywhere; staging folders and
# partial files only where dualbuild writes outputs (other programs' names in /tmp are theirs).
_SCRATCH = re.compile(r"dualbuild-[a-z]+-(\d+)-.*")
_PARTIAL = re.compile(r"(?:\.dualbuild-|\.tmp-)(\d+)(?:-.*)?")
# Where temporary buildah stores go (their overlay holds a mount while they are in use).
STORE_DIR = Path(os.environ.get("TMPDIR", "/var/tmp"))
GPG_KIND, STORE_KIND, BUILDAH_TMP_KIND, SECRETS_KIND = "gpg", "store", "buildah", "secrets"
# Where secrets are written for a run step's mount: memory where there is a /dev/shm.
SECRETS_SCRATCH = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())
PROC = Path("/proc")
MOUNTINFO = PROC / "self" / "mountinfo"
# The commands a build starts that may outlive it (and so be killed for it): buildah, the OCI
# runtimes and wrappers it runs steps through.
COMMANDS = frozenset({"buildah", "runc", "crun", "nsenter", "unshare", "skopeo"})


def owner_pid(name: str, *, partial: bool = True) -> int | None:
    """The PID a leftover's name says made it; None for a name that is not one of ours.

    Without ``partial`` only scratch folders count, not staging folders and partial files.
    """
    match = _SCRATCH.fullmatch(name) or (_PARTIAL.fullmatch(name) if partial else None)
    return int(match.group(1)) if match else None


def left_by_dead_process(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` + ``PID-…`` of another dualbuild process, which is gone.

    How containers, run steps' state and network namespaces are named (their owners are
    asked of buildah, runc and ip, not found in a folder by :func:`reclaim`).
    """
    if not name.startswith(prefix):
        return False
    pid, dash, _ = name.removeprefix(prefix).partition("-")
    return bool(dash) and pid.isdigit() and int(pid) != os.getpid() and run.process_gone(int(pid))


def kill_commands_of_dead_processes(name_prefix: str) -> int:
    """Kill the commands a dead dualbuild process started that still run; return how many.

    SIGKILL does not reach a child: a ``buildah from --name`` in flight would make its
    container after the next build reclaimed the dead one's. Such a command is one of the
    tools dualbuild starts (``COMMANDS``), of our user, and names something of the dead process
    in its argv (``name_prefix`` + PID + its session, as containers and stage images are
    named) or runs with a TMPDIR that is its buildah scratch folder. Nothing else is touched.
    """
    session = re.compile(re.escape(name_prefix) + r"(\d+)-[0-9a-f]{8}-")
    killed = 0
    for entry in os.scandir(PROC):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.stat(entry.path).st_uid != os.geteuid():
                continue
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if os.path.basename(os.fsdecode(argv[0])) not in COMMANDS:
                continue
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        owners = [
            int(match.group(1))
            for arg in argv[1:]
            if (match := session.match(os.fsdecode(arg).removeprefix("localhost/")))
        ]
        tmpdirs = [
            Path(os.fsdecode(item.removeprefix(b"TMPDIR=")))
            for item in environ
            if item.startswith(b"TMPDIR=")
        ]
        owners += [
            pid
            for tmpdir in tmpdirs
            if tmpdir.parent == STORE_DIR
            and tmpdir.name.startswith(f"dualbuild-{BUILDAH_TMP_KIND}-")
            and (pid := owner_pid(tmpdir.name, partial=False)) is not None
        ]
        if any(pid != os.getpid() and run.process_gone(pid) for pid in owners):
            log.debug(
                "killing process %s (%s), started by a dualbuild process that is gone",
                entry.name,
                os.path.basename(os.fsdecode(argv[0])),
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def reclaim(scratch: Sequence[Path], outputs: Sequence[Path] = ()) -> list[Path]:
    """Remove what dead dualbuild processes left; return what was removed.

    Args:
        scratch: Temporary folders: only ``dualbuild-KIND-PID-…`` there is ours.
        outputs: Folders dualbuild writes outputs to (an output or cache directory, a site):
            staging folders and partial files there are ours too.
    """
    removed = []
    places = {**dict.fromkeys(scratch, False), **dict.fromkeys(outputs, True)}
    for directory, partial in places.items():
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            pid = owner_pid(entry.name, partial=partial)
            if pid is None or pid == os.getpid() or not run.process_gone(pid):
                continue
            path = Path(entry.path)
            log.debug("removing %s, left by dualbuild process %d, which is gone", path, pid)
            _remove(path)
            removed.append(path)
    return removed


def scratch_directories() -> list[Path]:
    """Where dualbuild's scratch folders go: the temporary folders (keyrings: /tmp), the stores', secrets'."""
    return [Path(tempfile.gettempdir()), Path("/tmp"), STORE_DIR, SECRETS_SCRATCH]


def remove_scratch(path: Path) -> None:
    """Remove a scratch folder (or file), never deleting through a mount inside it.

    What a tool left mounted there is unmounted first; if that fails the folder stays.
    """
    _remove(path)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if path.name.startswith(f"dualbuild-{GPG_KIND}-") and shutil.which("gpgconf"):
        # Its agent outlived the process that started it.
        run.run(["gpgconf", "--homedir", os.fspath(path), "--kill", "all"], check=False)
    # A mount a killed process left inside (a temporary store's overlay, what buildah mounted
    # in its temporary folders) is let go first: deleting through it would delete what it shows.
    for mount in _mounts_below(path):
        run.run(["umount", "-R", mount], check=False)
    still = _mounts_below(path)
    if still:
        log.warning("left %s in place: %s is still mounted there", path, still[0])
        return
    shutil.rmtree(path, ignore_errors=True)


def _mounts_below(path: Path) -> list[str]:
    """The mount points inside ``path``, outermost first."""
    # mountinfo names mount points by their real path.
    inside = os.path.realpath(path) + "/"
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return []
    # mountinfo escapes space, tab, newline and backslash in octal.
    points = [_unescaped(line.split(" ")[4]) for line in lines if len(line.split(" ")) > 4]
    return sorted({point for point in points if point.startswith(inside)}, key=len)


def _unescaped(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)
