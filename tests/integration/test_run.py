"""The one place that starts processes: output captured or streamed, failures with their command."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from dualbuild import run
from dualbuild.errors import CommandError, Interrupted, ToolNotFoundError


def test_output_is_captured_and_a_failure_carries_the_command_and_its_tail() -> None:
    assert run.run(["sh", "-c", "echo out; echo err >&2"]).stdout == "out\n"
    with pytest.raises(CommandError) as caught:
        run.run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"])
    assert caught.value.returncode == 3
    assert (
        str(caught.value)
        == "command failed with exit code 3: sh -c 'echo one >&2; echo two >&2; exit 3'\none\ntwo"
    )
    assert run.run(["false"], check=False).returncode == 1


def test_lines_are_streamed_as_they_come_and_stdin_is_fed() -> None:
    lines: list[str] = []
    run.run(["sh", "-c", "cat; echo done >&2"], input=b"a\nb\n", on_line=lines.append)
    assert lines == ["a", "b", "done"]


def test_a_stream_in_and_a_stream_out(tmp_path: Path) -> None:
    with run.stream_stdin(["sh", "-c", f"cat > {tmp_path / 'in'}"]) as sink:
        sink.write(b"fed through stdin")
    assert (tmp_path / "in").read_bytes() == b"fed through stdin"
    with run.stream_stdout(["printf", "%s", "streamed"]) as source:
        assert source.read() == b"streamed"
    with pytest.raises(CommandError), run.stream_stdout(["sh", "-c", "exit 4"]) as source:
        source.read()


def test_a_missing_tool_says_why_it_is_needed_and_how_to_get_it() -> None:
    with pytest.raises(
        ToolNotFoundError, match="could not find 'no-such-tool', which is required to test"
    ) as caught:
        run.find_tool("no-such-tool", "test")
    assert caught.value.exit_code == 3
    assert caught.value.hint == "install it: apt-get install no-such-tool"


def test_an_interrupt_stops_the_command_before_it_propagates(tmp_path: Path) -> None:
    pids: list[int] = []
    # To the main thread, which is blocked reading the command's output (what a terminal's signal does).
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGTERM))

    def line(text: str) -> None:
        if not pids:
            pids.append(int(text))
            timer.start()

    finished = tmp_path / "finished"
    with run.interrupts_as_errors(), pytest.raises(Interrupted) as caught:
        run.run(["sh", "-c", f'echo "$$"; sleep 120; touch "{finished}"'], on_line=line)
    timer.cancel()
    assert caught.value.exit_code == 143
    # The command was stopped, not waited for: it never got to its end, and it is gone.
    assert not finished.exists()
    assert run.process_gone(pids[0])
