"""What a copy step reads from the build context: what the ignore file leaves in, never the output.

The context's ``.dualbuildignore`` (or, when there is none, its ``.dockerignore``) says what copy
steps never see, as Docker's build context does; the output directory, when it lies inside the
context, is never part of it either, ignore file or not. The same selection decides the copy's
cache key and what ``buildah copy`` copies: buildah gets an ignore file of our own naming each
left-out path literally, so its matcher and ours cannot disagree, and it never reads the
context's ``.containerignore`` or ``.dockerignore`` on its own.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild.builder.ignore import IGNORE_FILES, IgnoreRules, PatternError, parse
from dualbuild.errors import BuildError, Problem, RecipeError
from dualbuild.files import scratch_directory


@dataclass(frozen=True, kw_only=True)
class ContextFilter:
    """What of the context copy steps may read.

    Attributes:
        context: The build context.
        rules: The ignore file's patterns (none without an ignore file).
        out_dir: The output directory relative to the context, when it lies inside it.
        secret_files: The files of build secrets that lie inside the context, relative to it.
    """

    context: Path
    rules: IgnoreRules = field(default_factory=IgnoreRules)
    out_dir: str | None = None
    secret_files: frozenset[str] = frozenset()

    def in_out_dir(self, relative: str) -> bool:
        """Whether ``relative`` is the output directory or inside it."""
        return self.out_dir is not None and (
            relative == self.out_dir or relative.startswith(self.out_dir + "/")
        )

    def why_excluded(self, relative: str) -> str | None:
        """Why ``relative`` (a ``/``-separated path in the context) is left out; None if it is not."""
        if self.in_out_dir(relative):
            return f"it is in the output directory {self.out_dir}/, which is never part of the build context"
        if relative in self.secret_files:
            return "it is a build secret's file, which is never copied into the image"
        pattern = self.rules.deciding(relative)
        if pattern is None:
            return None
        return f"{self.rules.file} excludes it (line {pattern.line}: {pattern.text})"

    def may_include_below(self, relative: str) -> bool:
        """Whether something inside the left-out directory ``relative`` might still be copied."""
        return not self.in_out_dir(relative) and self.rules.may_include_below(relative)


@dataclass(frozen=True, kw_only=True)
class ContextCopy:
    """What one copy step reads from the context.

    Attributes:
        sources: The paths handed to ``buildah copy`` (glob matches left out entirely are not).
        entries: Every file, directory and symlink it copies, each source's in path order.
        excluded: The paths left out inside the sources, relative to the context (a left-out
            directory stands for everything in it).
        counts: How many of ``entries`` each source has, in order.
    """

    sources: tuple[Path, ...]
    entries: tuple[Path, ...]
    excluded: tuple[str, ...] = ()
    counts: tuple[int, ...] = ()

    def by_source(self) -> Iterator[tuple[Path, tuple[Path, ...]]]:
        """Each source with its entries (itself first)."""
        at = 0
        for source, count in zip(self.sources, self.counts, strict=True):
            yield source, self.entries[at : at + count]
            at += count


def load_filter(context: Path, out_dir: Path, secret_files: Sequence[Path] = ()) -> ContextFilter:
    """The context's ignore file (``.dualbuildignore``, else ``.dockerignore``), output directory and secrets.

    Raises:
        RecipeError: the ignore file has a line Docker would refuse too (exit 2).
    """
    rules = IgnoreRules()
    for name in IGNORE_FILES:
        path = context / name
        if path.is_file():
            try:
                rules = parse(path.read_bytes().decode("utf-8", "surrogateescape"), name)
            except PatternError as error:
                raise RecipeError(
                    [Problem(file=os.fspath(path), key="", line=error.line, message=error.message)]
                ) from None
            break
    # By name and where its links lead: a secret named through a link is the file it reaches.
    secrets = frozenset(inside for path in secret_files for inside in _inside_by_name_and_link(context, path))
    return ContextFilter(
        context=context, rules=rules, out_dir=_inside(context, out_dir), secret_files=secrets
    )


def _inside_by_name_and_link(context: Path, path: Path) -> set[str]:
    """Each way ``path`` lies inside ``context``: as named, and once its symlinks resolve."""
    found = set()
    for base, target in (
        (Path(os.path.normpath(context.absolute())), Path(os.path.normpath(path.absolute()))),
        (Path(os.path.realpath(context)), Path(os.path.realpath(path))),
    ):
        if target != base and target.is_relative_to(base):
            found.add(target.relative_to(base).as_posix())
    return found


def _inside(context: Path, path: Path) -> str | None:
    """``path`` relative to ``context`` when it lies inside it (by name, or once symlinks resolve)."""
    for base, target in (
        (Path(os.path.normpath(context.absolute())), Path(os.path.normpath(path.absolute()))),
        (Path(os.path.realpath(context)), Path(os.path.realpath(path))),
    ):
        if target != base and target.is_relative_to(base):
            return target.relative_to(base).as_posix()
    return None


def select(context_filter: ContextFilter, sources: tuple[str, ...]) -> ContextCopy:
    """What a copy of ``sources`` reads: they must exist and not be left out entirely.

    A glob's matches that are left out entirely are skipped, as Docker skips them; a source named
    without a glob, or a glob all of whose matches are left out, is an error (Docker says "not
    found" for both).

    Raises:
        BuildError: a source is missing or left out, or a symlink leads out of the context.
    """
    context = context_filter.context
    real_context = Path(os.path.realpath(context))
    copied: list[Path] = []
    entries: list[Path] = []
    counts: list[int] = []
    excluded: list[str] = []
    for source in sources:
        pattern = os.fspath(context / source)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(source) else [pattern]
        if not matches or not os.path.lexists(matches[0]):
            raise BuildError(f"copy: {source!r} not found in the build context {context}")
        reasons: list[str] = []
        left_out: list[str] = []
        for match in matches:
            path = Path(match)
            relative = Path(os.path.relpath(path, context)).as_posix()
            walk = _Walk(context_filter, real_context, source)
            walk.visit(path, relative, top=True)
            if not walk.entries:
                left_out.append(relative)
                reasons.append(f"{relative}: {context_filter.why_excluded(relative)}")
                continue
            copied.append(path)
            entries.extend(walk.entries)
            counts.append(len(walk.entries))
            excluded.extend(walk.excluded)
        if len(left_out) == len(matches):
            if context_filter.in_out_dir(left_out[0]):
                hint = "build into an output directory outside the context (--out), or copy something else"
            elif left_out[0] in context_filter.secret_files:
                hint = "a build secret's file is never copied into the image: copy another file"
            else:
                hint = f"remove it from the copy step, or end {context_filter.rules.file} with !{left_out[0]}"
            raise BuildError(
                f"copy: {source!r} is excluded from the build context: " + "; ".join(reasons), hint=hint
            )
    # What the build writes into the context later (the output folder, made and staged in
    # before a copy runs) is left out whether it exists now or not; secrets' files always.
    always = [context_filter.out_dir, *sorted(context_filter.secret_files)]
    excluded.extend(item for item in always if item is not None and item not in excluded)
    return ContextCopy(
        sources=tuple(copied), entries=tuple(entries), excluded=tuple(excluded), counts=tuple(counts)
    )


@dataclass
class _Walk:
    """One source's walk: what it copies, in path order, and the top-most paths it leaves out."""

    context_filter: ContextFilter
    real_context: Path
    source: str
    entries: list[Path] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def visit(self, path: Path, relative: str, *, top: bool = False) -> None:
        left_out = relative != "." and self.context_filter.why_excluded(relative) is not None
        if not path.is_dir() or path.is_symlink():
            if left_out:
                self.excluded.append(relative)
                return
            if top or path.is_symlink():
                self._check_inside(path)
            self.entries.append(path)
            return
        if left_out and not self.context_filter.may_include_below(relative):
            self.excluded.append(relative)
            return
        if top:
            self._check_inside(path)
        entries_before, excluded_before = len(self.entries), len(self.excluded)
        self.entries.append(path)
        for name in sorted(os.listdir(path)):
            self.visit(path / name, name if relative == "." else f"{relative}/{name}")
        if left_out and len(self.entries) == entries_before + 1:
            # Nothing inside came back: the directory is left out as a whole.
            del self.entries[entries_before:], self.excluded[excluded_before:]
            self.excluded.append(relative)

    def _check_inside(self, candidate: Path) -> None:
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(self.real_context):
            shown = os.readlink(candidate) if candidate.is_symlink() else str(real)
            raise BuildError(
                f"copy {self.source!r}: {candidate} is a symlink pointing outside the build context "
                f"(-> {shown}); refusing to follow it",
                hint="copy the file it points to into the context instead",
            )


def literal_pattern(relative: str) -> str:
    """An ignore-file pattern matching exactly the path ``relative`` (and what is inside it).

    Every punctuation character is escaped; whitespace goes in a class, since ignore files trim
    each line; a line break cannot be written in a line, so it is matched by ``?``.
    """
    out = []
    for char in relative:
        if char in "\n\r":
            out.append("?")
        elif char.isspace():
            out.append(f"[{char}]")
        elif char.isascii() and not char.isalnum() and char not in "/_-":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


@contextmanager
def buildah_ignore_file(copy: ContextCopy) -> Iterator[Path]:
    """A file for ``buildah copy --ignorefile`` leaving out exactly ``copy.excluded``; then removed."""
    with scratch_directory("ignore") as directory:
        path = directory / "ignore"
        path.write_bytes(b"".join(os.fsencode(literal_pattern(item)) + b"\n" for item in copy.excluded))
        yield path
