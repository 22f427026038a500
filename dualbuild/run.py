"""The one place that starts processes: argv lists, the command logged, the tool checked up front.

Failures raise ``CommandError`` with the exact command and the tail of its output. A process
still running when the build is interrupted is terminated before the interruption propagates.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from dualbuild.errors import CommandError, Interrupted, ToolNotFoundError
from dualbuild.log import TRACE, log

TAIL_LINES = 20
# Debian package that provides each tool, for the install hint.
PACKAGES = {
    "buildah": "buildah",
    "skopeo": "skopeo",
    "gpg": "gnupg",
    "actool": "appc-spec",
    "mmdebstrap": "mmdebstrap",
    "docker": "docker.io",
    "runc": "runc",
    "zstd": "zstd",
    "unshare": "util-linux",
    "tar": "tar",
}

Argv = Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class Result:
    """What a finished command left: its exit code, its stdout and the tail of its output."""

    returncode: int
    stdout: str
    tail: str


def find_tool(name: str, reason: str) -> str:
    """The path of ``name``, or ToolNotFoundError saying why it is needed and how to get it."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, name)
        raise ToolNotFoundError(
            f"could not find {name!r}, which is required to {reason}",
            hint=f"install it: apt-get install {package}",
        )
    return path


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run(
    argv: Argv,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    hint: str | None = None,
    shield: bool = False,
) -> Result:
    """Run a command to completion.

    Args:
        argv: the command; paths are converted with os.fspath.
        env: the complete environment (default: inherit).
        cwd: working directory.
        input: bytes for stdin (default: no stdin).
        on_line: receives every line of the combined stdout/stderr as it comes (live output);
            without it stdout is captured and returned, stderr kept for the error message.
        check: raise CommandError on a non-zero exit.
        hint: a hint attached to the CommandError.
        shield: let the command finish before an interrupt is raised (for short commands that
            must not be killed half-way, such as creating a container).

    Raises:
        CommandError: the command failed (with check).
    """
    if shield:
        with deferred_interrupts():
            return run(argv, env=env, cwd=cwd, input=input, on_line=on_line, check=check, hint=hint)
    check_interrupted()
    args = [os.fspath(a) for a in argv]
    log.log(TRACE, "+ %s", shlex.join(args))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    # A new session: a terminal's Ctrl-C reaches us alone, and we stop the child in order.
    process = subprocess.Popen(
        args,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if on_line else subprocess.PIPE,
        start_new_session=True,
    )
    stdout = b""
    with process:
        try:
            if on_line is not None:
                assert process.stdout is not None
                if input is not None:
                    assert process.stdin is not None
                    process.stdin.write(input)
                    process.stdin.close()
                for raw in process.stdout:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    tail.append(line)
                    on_line(line)
                process.wait()
            else:
                stdout, stderr = process.communicate(input)
                tail.extend(stderr.decode("utf-8", "replace").splitlines()[-TAIL_LINES:])
        except BaseException:
            _terminate(process)
            raise
    if check and process.returncode != 0:
        raise CommandError(args, process.returncode, "\n".join(tail), hint=hint)
    return Result(process.returncode, stdout.decode("utf-8", "replace"), "\n".join(tail))


@contextmanager
def stream_stdout(argv: Argv) -> Iterator[IO[bytes]]:
    """Run a command and read its stdout as a stream (e.g. a decompressor); checked at the end.

    Raises:
        CommandError: the command failed.
    """
    check_interrupted()
    args = [os.fspath(a) for a in argv]
    log.log(TRACE, "+ %s", shlex.join(args))
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read() if process.stderr else b""))
    reader.start()
    try:
        yield process.stdout
        process.stdout.read()
        process.wait()
    except BaseException:
        _terminate(process)
        raise
    finally:
        reader.join()
        process.stdout.close()
        process.stderr.close()
    if process.returncode != 0:
        text = b"".join(errors).decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
        raise CommandError(args, process.returncode, "\n".join(text))


@contextmanager
def stream_stdin(
    argv: Argv, *, env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()
) -> Iterator[IO[bytes]]:
    """Run a command fed through its stdin as a stream (an extractor, a signer); checked at the end.

    Leaving the block is the end of the input. If the block raises, the command is terminated.

    Args:
        argv: the command.
        env: the complete environment (default: inherit).
        pass_fds: file descriptors the command inherits (e.g. a passphrase pipe).

    Raises:
        CommandError: the command failed, also when it stopped reading early.
    """
    check_interrupted()
    args = [os.fspath(a) for a in argv]
    log.log(TRACE, "+ %s", shlex.join(args))
    process = subprocess.Popen(
        args, env=dict(env) if env is not None else None, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=tuple(pass_fds),
        start_new_session=True,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    output = process.stdout
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    # Read its output as it comes: a command blocked on a full output pipe would stop reading ours.
    reader = threading.Thread(
        target=lambda: tail.extend(raw.decode("utf-8", "replace").rstrip("\n") for raw in output)
    )
    reader.start()
    try:
        try:
            yield process.stdin
            process.stdin.close()
        except BrokenPipeError:
            pass  # it stopped reading: its exit code and output say why
        process.wait()
    except BaseException:
        _terminate(process)
        raise
    finally:
        reader.join()
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        output.close()
    if process.returncode != 0:
        raise CommandError(args, process.returncode, "\n".join(tail))


@dataclass
class Helper:
    """A helper process that runs beside the build (a user-mode network stack); see start_helper."""

    process: subprocess.Popen[bytes]
    # Our end of the pipe whose closing tells the helper to exit: also when we are SIGKILLed.
    lifeline: int

    def stop(self) -> None:
        """Tell it to exit (close its lifeline), and make sure it did."""
        with contextlib.suppress(OSError):
            os.close(self.lifeline)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _terminate(self.process)


def start_helper(argv_of: Callable[[int, int], Argv], *, ready_timeout: float = 30.0) -> Helper:
    """Start a helper that exits when a pipe closes and says it is ready by writing to another.

    ``argv_of(exit_fd, ready_fd)`` gives the command, told which of its descriptors are which.
    The process dies with us: the kernel closes our end of the exit pipe whatever ends us.

    Raises:
        CommandError: it exited, or was not ready in time.
    """
    check_interrupted()
    exit_read, exit_write = os.pipe()
    ready_read, ready_write = os.pipe()
    os.set_inheritable(exit_write, False)
    os.set_inheritable(ready_read, False)
    args = [os.fspath(a) for a in argv_of(exit_read, ready_write)]
    log.log(TRACE, "+ %s", shlex.join(args))
    try:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(exit_read, ready_write), start_new_session=True,
        )  # fmt: skip
    except BaseException:
        for fd in (exit_read, exit_write, ready_read, ready_write):
            os.close(fd)
        raise
    os.close(exit_read)
    os.close(ready_write)
    helper = Helper(process, exit_write)
    try:
        ready = _read_with_timeout(ready_read, ready_timeout)
    except BaseException:
        helper.stop()
        raise
    finally:
        os.close(ready_read)
    if not ready:
        helper.stop()
        assert process.stderr is not None
        tail = process.stderr.read().decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
        raise CommandError(
            args, process.returncode if process.returncode is not None else -1, "\n".join(tail)
        )
    assert process.stderr is not None
    process.stderr.close()
    return helper


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    readable, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1) if readable else b""


# PIDs are below pid_max, which can be raised to 2**22 and no further.
PID_MAX = 2**22


def process_gone(pid: int) -> bool:
    """Whether no process has the PID ``pid`` (what a dead process left is then nobody's).

    A number that cannot be a PID (0 would mean our process group) is never said to be gone.
    """
    if not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_PR_SET_CHILD_SUBREAPER = 36


@contextmanager
def orphans_adopted() -> Iterator[None]:
    """While inside, become the parent of orphaned descendants (Linux's child subreaper), not init.

    What a command leaves running in the background (a daemon, a `cmd &`) is then ours to
    find with :func:`children` and stop; after the block, orphans go to init again.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def children() -> set[int]:
    """The PIDs whose parent is this process."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        if fields[1] == me:
            found.add(int(stat.parent.name))
    return found


def kill_new_children(before: set[int]) -> int:
    """SIGKILL and reap every child that is not in ``before``, and what they leave; how many."""
    killed = 0
    for _ in range(100):
        new = children() - before
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed += 1
    return killed


_HANDLED = (signal.SIGINT, signal.SIGTERM)
# Signals whose Interrupted was raised where Python ignores exceptions (a finalizer such as
# Popen.__del__, a weakref callback): check_interrupted raises them again.
_swallowed: list[int] = []


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _keep_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    if isinstance(unraisable.exc_value, Interrupted):
        _swallowed.append(unraisable.exc_value.signum)
        return
    sys.__unraisablehook__(unraisable)


def _watch_finalizers() -> None:
    sys.unraisablehook = _keep_swallowed


def check_interrupted() -> None:
    """Raise an interrupt that a finalizer swallowed, unless interrupts are being held.

    A signal handler runs between any two bytecodes, also inside ``__del__``, where Python
    prints the exception and carries on: the build would go on as if no signal had come.
    Every command start and every phase boundary calls this.
    """
    if _swallowed and signal.getsignal(signal.SIGINT) is _raise_interrupted:
        signum = _swallowed[0]
        _swallowed.clear()
        raise Interrupted(signum)


def install_interrupt_handlers() -> None:
    """Make SIGINT/SIGTERM raise ``Interrupted`` for the rest of the process (main thread only)."""
    _watch_finalizers()
    for signum in _HANDLED:
        signal.signal(signum, _raise_interrupted)


@contextmanager
def interrupts_as_errors() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``Interrupted`` so cleanup code runs (exit 130/143).

    Only in the main thread; elsewhere (tests in threads) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _watch_finalizers()
    previous = {s: signal.signal(s, _raise_interrupted) for s in _HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleanup runs, then raise the first one that came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in _HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending and previous[signal.Signals(pending[0])] is _raise_interrupted:
        raise Interrupted(pending[0])
    check_interrupted()
