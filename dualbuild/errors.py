"""The error tree: every failure a user can cause or meet, each with its exit code.

Library code raises these; only ``cli/main.py`` turns them into messages and exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DualbuildError(Exception):
    """Base of every error dualbuild reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One mistake in a recipe: where it is and what is wrong."""

    file: str
    key: str
    message: str
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class RecipeError(DualbuildError):
    """A recipe (or a value given for it on the command line) is invalid. Exit 2."""

    exit_code = 2

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def of(cls, problem: Problem) -> RecipeError:
        """The error of one problem."""
        return cls([problem])


class UsageError(DualbuildError):
    """A command-line value is invalid (not a recipe key). Exit 2."""

    exit_code = 2


class ToolNotFoundError(DualbuildError):
    """A required external program is not installed. Exit 3."""

    exit_code = 3


class CommandError(DualbuildError):
    """An external command failed; the message carries the exact command and its output tail."""

    exit_code = 1

    def __init__(
        self, argv: Sequence[str], returncode: int, output_tail: str, *, hint: str | None = None
    ) -> None:
        import shlex

        self.argv = tuple(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        message = f"command failed with exit code {returncode}: {shlex.join(self.argv)}"
        if output_tail.strip():
            message += "\n" + output_tail.rstrip("\n")
        super().__init__(message, hint=hint)


class BuildError(DualbuildError):
    """A build could not be completed (a step failed, a base is missing, ...). Exit 1."""

    exit_code = 1


class SigningError(DualbuildError):
    """The ACI could not be signed, or the signing key is unusable. Exit 4."""

    exit_code = 4


class PublishError(DualbuildError):
    """Publishing to a registry or discovery site failed. Exit 5."""

    exit_code = 5


class TemplateError(DualbuildError):
    """A `dualbuild new` template is broken (not the user's input). Exit 1."""

    exit_code = 1


class ReportError(DualbuildError):
    """A build report cannot be read or is not one. Exit 1."""

    exit_code = 1


class VerifyError(DualbuildError):
    """An artifact failed verification. Exit 1."""

    exit_code = 1


class Interrupted(DualbuildError):
    """The build was stopped by a signal; exit 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
