"""Unit tests start no process: every attempt fails the test. The ``fake_run`` seam stands in
for dualbuild.run, records each argv dualbuild would run, and answers as the tool would."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from dualbuild import run
from dualbuild.builder import buildah as buildah_module
from dualbuild.errors import CommandError


class ProcessStarted(AssertionError):
    """A unit test tried to start a process."""


@pytest.fixture(autouse=True)
def store_dir_of_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """buildah's session TMPDIR (made on a Buildah's first command) in a folder of pytest's.

    Unit tests drive Buildah through fake_run and rarely call cleanup(): the folders would
    stay in /var/tmp until a real build reclaimed them.
    """
    monkeypatch.setattr(buildah_module, "STORE_DIR", tmp_path_factory.mktemp("store-dir"))


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **_kwargs: object) -> None:
        raise ProcessStarted(f"a unit test started {args[:1]!r}: use fake_run, or move it to integration/")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve"):
        monkeypatch.setattr(os, name, refuse)


# A tool's behaviour given its argv: (exit code, stdout, output tail); it may write files too.
Behaviour = Callable[[list[str]], tuple[int, str, str]]


@dataclass
class Answer:
    """What the fake tool does for a matching argv."""

    tokens: tuple[str, ...]
    stdout: str = ""
    returncode: int = 0
    tail: str = ""
    behaviour: Behaviour | None = None


@dataclass
class FakeRun:
    """Records what dualbuild runs; answers by the first rule whose tokens appear in order."""

    calls: list[list[str]] = field(default_factory=list)
    stdin: list[bytes] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    # The calls run with shield=True (an interrupt waits for them to finish).
    shielded: list[list[str]] = field(default_factory=list)

    def answer(
        self, *tokens: str, stdout: str = "", returncode: int = 0, tail: str = "",
        behaviour: Behaviour | None = None,
    ) -> None:  # fmt: skip
        """When an argv holds ``tokens`` in this order (the tool by its name), answer so.

        ``behaviour``, when given, decides the answer from the argv (and may write files, as
        the tool would); the latest rule that matches wins.
        """
        self.answers.insert(0, Answer(tokens, stdout, returncode, tail, behaviour))

    def of(self, tool: str) -> list[list[str]]:
        """The argv of every call of ``tool``, with the tool's path shortened to its name."""
        return [[tool, *argv[1:]] for argv in self.calls if os.path.basename(argv[0]) == tool]

    def _respond(self, argv: Sequence[Any], check: bool) -> run.Result:
        args = [os.fspath(a) for a in argv]
        self.calls.append(args)
        named = [os.path.basename(args[0]), *args[1:]]
        answer = next((a for a in self.answers if _in_order(a.tokens, named)), Answer(()))
        code, stdout, tail = (
            answer.behaviour(args) if answer.behaviour else (answer.returncode, answer.stdout, answer.tail)
        )
        if check and code != 0:
            raise CommandError(args, code, tail)
        return run.Result(code, stdout, tail)

    def run(self, argv: Sequence[Any], *, check: bool = True, **kwargs: object) -> run.Result:
        if kwargs.get("shield"):
            self.shielded.append([os.fspath(a) for a in argv])
        return self._respond(argv, check)

    @contextmanager
    def stream_stdout(self, argv: Sequence[Any]) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self._respond(argv, True).stdout.encode())

    @contextmanager
    def stream_stdin(self, argv: Sequence[Any], **_kwargs: object) -> Iterator[IO[bytes]]:
        result = self._respond(argv, False)
        sink = io.BytesIO()
        yield sink
        self.stdin.append(sink.getvalue())
        if result.returncode != 0:
            raise CommandError([os.fspath(a) for a in argv], result.returncode, result.tail)

    def start_helper(self, argv_of: Any, **_kwargs: object) -> Any:
        self._respond(argv_of(90, 91), True)  # descriptors as a helper would be told them

        class _Stopped:
            def stop(self) -> None:
                pass

        return _Stopped()


def _in_order(tokens: Sequence[str], argv: Sequence[str]) -> bool:
    rest = iter(argv)
    return all(any(token == arg for arg in rest) for token in tokens)


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    """Replace every way dualbuild starts a process (dualbuild.run) by a recorder."""
    fake = FakeRun()
    monkeypatch.setattr(run, "run", fake.run)
    monkeypatch.setattr(run, "stream_stdout", fake.stream_stdout)
    monkeypatch.setattr(run, "stream_stdin", fake.stream_stdin)
    monkeypatch.setattr(run, "start_helper", fake.start_helper)
    monkeypatch.setattr(run, "find_tool", lambda name, _reason: f"/usr/bin/{name}")
    return fake


@pytest.fixture
def mounted(fake_run: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder ``buildah mount`` answers with: file steps write there, as on a mounted root.

    Ownership changes are dropped (a unit test need not run as root).
    """
    for name in ("chown", "lchown", "fchown"):
        monkeypatch.setattr(os, name, lambda *_args: None)
    root = tmp_path / "mounted"
    root.mkdir()
    fake_run.answer("buildah", "mount", stdout=f"{root}\n")
    return root
