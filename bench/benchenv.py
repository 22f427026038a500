"""What every benchmark needs around it: an isolated buildah store, a throwaway signing key,
timed child processes with their peak RSS, and cleanup that leaves nothing behind.

Nothing here touches the user's buildah store or keyring: buildah is pointed at a private
store through ``CONTAINERS_STORAGE_CONF`` (as tests/integration/test_build_cli.py does), gpg at a
temporary ``GNUPGHOME`` holding one RSA 2048 key, dualbuild's own cache at a private
``XDG_CACHE_HOME``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = ROOT / ".venv" / "bin"


def python() -> str:
    """The project's interpreter (the venv's when it exists)."""
    candidate = VENV_BIN / "python"
    return str(candidate) if candidate.exists() else sys.executable


def dualbuild_cli() -> str:
    """The ``dualbuild`` console script of the project's venv."""
    candidate = VENV_BIN / "dualbuild"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dualbuild")
    if found is None:
        sys.exit("dualbuild is not installed: run `make venv` first")
    return found


def require_tools(*names: str) -> None:
    """Exit with a clear message when an external tool is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (run `make setup` as root)")


def log(message: str) -> None:
    """Progress on stderr; stdout is left for results."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- child processes --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """How one child process went: wall time, CPU time and its peak RSS (with its children)."""

    returncode: int
    seconds: float
    user: float
    system: float
    max_rss_kib: int
    stdout: str
    stderr: str


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 3600,
) -> ChildResult:
    """Run ``argv`` and measure it with ``wait4``: the rusage of exactly this child.

    ``ru_maxrss`` from wait4 is the peak RSS of the child, or of the largest of its own
    waited-for descendants (gpg, tar) if that is bigger: what ``/usr/bin/time -v`` reports.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        process = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None, cwd=cwd, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            status, usage = _wait4(process.pid, timeout, start)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
        seconds = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ChildResult(
            returncode=process.returncode,
            seconds=seconds,
            user=usage.ru_utime,
            system=usage.ru_stime,
            max_rss_kib=usage.ru_maxrss,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )
    if check and result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-30:])
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(argv)}\n{tail}")
    return result


def _wait4(pid: int, timeout: float, start: float) -> tuple[int, object]:
    while True:
        waited, status, usage = os.wait4(pid, os.WNOHANG)
        if waited == pid:
            return status, usage
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"pid {pid} still running after {timeout:.0f}s")
        time.sleep(0.005)


def shell_seconds(command: str, *, env: Mapping[str, str] | None = None) -> float:
    """Wall time of a shell pipeline (``bash -o pipefail -c``); fails if it fails."""
    return run_child(["bash", "-o", "pipefail", "-c", command], env=env).seconds


def drop_caches() -> None:
    """Write dirty pages back and empty the page cache (root only)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --- isolated buildah store + signing key -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """A private buildah store, GNUPGHOME with one RSA key, and dualbuild cache dir."""

    base: Path
    storage_conf: Path
    gnupghome: Path
    fingerprint: str
    xdg_cache: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child that must use only this sandbox."""
        return {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "GNUPGHOME": str(self.gnupghome),
            "DUALBUILD_SIGN_KEY": self.fingerprint,
            "XDG_CACHE_HOME": str(self.xdg_cache),
            **extra,
        }


@contextlib.contextmanager
def sandbox() -> Iterator[Sandbox]:
    """Make a sandbox under /tmp (short paths: gpg-agent's socket path is limited); remove it after.

    Cleanup runs on success, failure, Ctrl-C and SIGTERM: every container and image of the
    private store is removed, its overlay mounts are unmounted, the gpg-agent is stopped.
    """
    base = Path(tempfile.mkdtemp(prefix="dbb-", dir="/tmp"))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        (base / "run").mkdir()
        conf = base / "storage.conf"
        conf.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{base / "root"}"\nrunroot = "{base / "run"}"\n'
        )
        home = base / "g"
        home.mkdir(mode=0o700)
        fingerprint = _make_key(home)
        xdg = base / "xdg"
        xdg.mkdir()
        yield Sandbox(base=base, storage_conf=conf, gnupghome=home, fingerprint=fingerprint, xdg_cache=xdg)
    finally:
        _cleanup(base)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def _make_key(home: Path) -> str:
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-generate-key",
         "dualbuild bench <bench@dualbuild.invalid>", "rsa2048", "sign", "0"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-secret-keys"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))


def _cleanup(base: Path) -> None:
    conf = base / "storage.conf"
    if conf.exists():
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
        for args in (["rm", "--all"], ["rmi", "--all", "--force"]):
            subprocess.run(["buildah", *args], env=env, capture_output=True, check=False)
    # Overlay keeps a bind mount of its own directory (and a merged mount per container).
    subprocess.run(["umount", "-R", str(base / "root" / "overlay")], capture_output=True, check=False)
    home = base / "g"
    if home.exists():
        subprocess.run(
            ["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)},
            capture_output=True, check=False,
        )  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)


# --- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    tools = {}
    for name, argv in {
        "buildah": ["buildah", "--version"],
        "pigz": ["pigz", "--version"],
        "actool": ["actool", "version"],
        "gpg": ["gpg", "--version"],
        "tar": ["tar", "--version"],
    }.items():
        with contextlib.suppress(OSError):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            text = (done.stdout or done.stderr).strip().splitlines()
            tools[name] = text[0] if text else ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tools": tools,
    }
