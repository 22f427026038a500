"""The build context's ignore file, matched as Docker matches it, and what copy steps read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualbuild.builder.context import ContextFilter, literal_pattern, load_filter, select
from dualbuild.builder.ignore import PatternError, parse
from dualbuild.errors import BuildError, RecipeError

# (ignore file lines, path relative to the context, excluded?). The first block is Docker's
# documentation of the file ("dockerignore file" in the Dockerfile reference); the rest is the
# behaviour of moby/patternmatcher (MatchesOrParentMatches) and ignorefile.ReadAll, case by case.
CASES: list[tuple[list[str], str, bool]] = [
    # docs: "*/temp*" excludes temp* in any immediate subdirectory of the root
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/temp", True),
    (["*/temp*"], "temporary.txt", False),
    (["*/temp*"], "a/b/temporary.txt", False),
    # docs: "*/*/temp*" two levels below the root
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["*/*/temp*"], "somedir/temporary.txt", False),
    # docs: "temp?" in the root, one more character
    (["temp?"], "tempa", True),
    (["temp?"], "tempab", False),
    (["temp?"], "dir/tempa", False),
    # docs: /foo/bar and foo/bar both mean bar in foo, and nothing else
    (["/foo/bar"], "foo/bar", True),
    (["foo/bar"], "foo/bar", True),
    (["foo/bar"], "x/foo/bar", False),
    (["/foo/bar"], "foo/bar/inside", True),  # a directory takes its contents along
    # docs: "**/*.go" excludes every .go file, the root's included
    (["**/*.go"], "main.go", True),
    (["**/*.go"], "cmd/tool/main.go", True),
    (["**/*.go"], "cmd/tool/main.gox", False),
    # docs: exceptions, and the last matching line decides
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-other.md", False),
    (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
    # docs: "*" then exceptions say what to include
    (["*", "!src", "!go.mod"], "src/main.go", False),
    (["*", "!src", "!go.mod"], "dist/app", True),
    (["*", "!src", "!go.mod"], "go.mod", False),
    # docs: a leading "#" in column 1 is a comment; lines are trimmed and cleaned
    (["# *.log"], "a.log", False),
    ([" # x"], "# x", True),  # not in column 1: a pattern
    (["  *.log  "], "a.log", True),
    (["./build/"], "build/out", True),
    (["build/../dist"], "dist", True),
    (["!  keep.log", "*.log"], "keep.log", True),  # an exception only acts on what came before
    # patternmatcher: * and ? never cross "/", a parent directory's match counts
    (["a*"], "ab/c", True),
    (["a*/b"], "a/c/b", False),
    (["a?b"], "a/b", False),
    (["*"], "any/thing/below", True),
    # ** at the start matches the end of a path, at the end the start, in the middle any dirs
    (["**"], "dir/file", True),
    (["**/dir"], "dir", True),
    (["**/dir"], "x/dir/file", True),
    (["**/.foo"], ".foo", True),
    (["**/.foo"], "bar.foo", False),
    (["**file"], "dir/myfile", True),  # moby compares the end of the path only
    (["dir/**"], "dir/dir2/file", True),
    (["abc/**"], "abc", False),  # the directory itself stays, empty
    (["abc/**"], "abc/def", True),
    (["a**/*.txt"], "a/dir/dir/file.txt", True),
    (["**/dir2/**"], "dir/dir2/dir3/file", True),
    (["**/**/*.txt2"], "dir/dir/file.txt", False),
    (["a/*.txt"], "a/dir/file.txt", False),
    # classes and escapes, as filepath.Match reads them
    (["a[b-d]e"], "ace", True),
    (["a[b-d]e"], "aae", False),
    (["a[^b-d]e"], "aze", True),
    (["[\\]a]"], "]", True),
    (["[x\\-]"], "-", True),
    (["[x\\-]"], "z", False),
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["[a-ζ]*"], "α", True),
    # regular-expression characters are literal
    ([".*"], ".foo", True),
    ([".*"], "foo", False),
    (["abc.def"], "abcZdef", False),
    (["a(b)c/def"], "a(b)c/def", True),
    (["a.|)$(}+{bc"], "a.|)$(}+{bc", True),
    (["dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    # exceptions inside an excluded directory
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    # the ignore file may exclude itself, and .dockerignore too
    ([".dualbuildignore", ".dockerignore"], ".dualbuildignore", True),
    ([".dualbuildignore", ".dockerignore"], ".dockerignore", True),
]


@pytest.mark.parametrize(("lines", "path", "excluded"), CASES)
def test_the_matcher_agrees_with_docker(lines: list[str], path: str, excluded: bool) -> None:
    assert parse("\n".join(lines) + "\n", ".dualbuildignore").excludes(path) is excluded


def test_the_context_root_is_never_excluded() -> None:
    assert not parse("*\n**\n.\n", ".dockerignore").excludes(".")


def test_a_bom_and_crlf_line_ends_are_read_as_docker_reads_them() -> None:
    rules = parse("\ufeff*.log\r\n!keep.log\r\n", ".dockerignore")
    assert [(p.text, p.exception, p.line) for p in rules.patterns] == [
        ("*.log", False, 1),
        ("keep.log", True, 2),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("!", 'illegal exclusion pattern: "!"'),
        ("a[", "unterminated"),
        ("[]a]", "malformed"),
        ("[-x]", "malformed"),
        ("[x-]", "malformed"),
        ("[a-b-c]", "malformed"),
        ("[^bc", "unterminated"),
        ("trailing\\", "backslash"),
        ("[z-a]", "runs backwards"),
    ],
)
def test_lines_docker_refuses_are_refused_with_their_line(line: str, message: str) -> None:
    with pytest.raises(PatternError, match=message.replace("[", "\\[").replace("(", "\\(")) as caught:
        parse(f"# a comment\n*.log\n{line}\n", ".dualbuildignore")
    assert caught.value.line == 3


def test_a_bad_ignore_file_is_a_recipe_error_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".dualbuildignore").write_text("*.log\n[oops\n")
    with pytest.raises(RecipeError, match=r"\.dualbuildignore:2: .*unterminated") as caught:
        load_filter(tmp_path, tmp_path / "dist")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("lines", "directory", "may"),
    [
        (["node_modules"], "node_modules", False),
        (["dist", "!dist/keep"], "dist", True),
        (["dist", "!dist/*/keep"], "dist", True),
        (["dist", "!other/keep"], "dist", False),
        (["*.log", "!keep.log"], "logs", False),  # !keep.log is at the root only
        (["logs", "!**/keep.log"], "logs", True),
        (["logs", "!logs**"], "logs", True),
        (["a/b", "!a/b"], "a/b", False),  # matching the directory itself brings nothing back inside
        (["cache", "![c]ache/x"], "cache", True),  # a class might match anything: descend
    ],
)
def test_an_excluded_directory_is_entered_only_if_an_exception_may_reach_inside(
    lines: list[str], directory: str, may: bool
) -> None:
    assert parse("\n".join(lines), ".dockerignore").may_include_below(directory) is may


def make_context(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def relative(context: Path, paths: tuple[Path, ...]) -> list[str]:
    return [Path(os.path.relpath(path, context)).as_posix() for path in paths]


def test_copying_the_context_leaves_out_what_the_ignore_file_says_and_the_output(tmp_path: Path) -> None:
    context = make_context(
        tmp_path,
        {
            ".dualbuildignore": "*.log\n!keep.log\n**/tmp\n",
            "app.log": "x",
            "keep.log": "x",
            "main.go": "package main",
            "src/util.go": "package src",
            "src/tmp/scratch": "x",
            "src/debug.log": "x",  # *.log is at the root only, as in Docker
            "dist/app-1.docker.tar": "old",
            "dist/app-1.aci": "old",
        },
    )
    copy = select(load_filter(context, context / "dist"), (".",))
    assert relative(context, copy.entries) == [
        ".",
        ".dualbuildignore",
        "keep.log",
        "main.go",
        "src",
        "src/debug.log",
        "src/util.go",
    ]
    assert list(copy.excluded) == ["app.log", "dist", "src/tmp"]
    assert copy.sources == (context / ".",)


def test_dockerignore_is_read_only_without_a_dualbuildignore(tmp_path: Path) -> None:
    context = make_context(tmp_path, {".dockerignore": "*.txt\n", "a.txt": "", "b.md": ""})
    assert load_filter(context, tmp_path / "out").rules.file == ".dockerignore"
    # (The output folder inside the context is left out even before it exists.)
    assert select(load_filter(context, tmp_path / "out"), (".",)).excluded == ("a.txt", "out")
    (context / ".dualbuildignore").write_text("*.md\n")
    assert select(load_filter(context, tmp_path / "out"), (".",)).excluded == ("b.md", "out")


def test_the_output_directory_is_left_out_without_an_ignore_file_and_only_inside(tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx", {"dist/old.tar": "", "out/x": "", "a": ""})
    assert select(load_filter(context, context / "dist"), (".",)).excluded == ("dist",)
    # Given as --out with a detour, or outside the context: nothing in the context is left out.
    assert select(load_filter(context, context / "sub" / ".." / "out"), (".",)).excluded == ("out",)
    assert select(load_filter(context, tmp_path / "elsewhere"), (".",)).excluded == ()
    # Not made yet (a first build makes it before its copy steps run): left out all the same.
    assert select(load_filter(context, context / "later"), (".",)).excluded == ("later",)
    assert load_filter(context, context / ".." / "dist").out_dir is None


def test_a_directory_with_an_exception_inside_is_entered_and_kept_as_the_parent(tmp_path: Path) -> None:
    context = make_context(tmp_path, {"docs/README.md": "", "docs/big.pdf": "", "docs/img/a.png": ""})
    rules = parse("docs\n!docs/README.md\n", ".dockerignore")
    copy = select(ContextFilter(context=context, rules=rules), ("docs",))
    assert relative(context, copy.entries) == ["docs", "docs/README.md"]
    assert list(copy.excluded) == ["docs/big.pdf", "docs/img"]


def test_a_named_source_that_is_excluded_is_an_error_saying_why(tmp_path: Path) -> None:
    context = make_context(tmp_path, {".dualbuildignore": "# logs\n*.log\n", "app.log": "", "dist/a": ""})
    context_filter = load_filter(context, context / "dist")
    why = r"\.dualbuildignore excludes it \(line 2: \*\.log\)"
    with pytest.raises(BuildError, match=r"'app\.log' is excluded .*" + why):
        select(context_filter, ("app.log",))
    with pytest.raises(BuildError, match="in the output directory dist/") as caught:
        select(context_filter, ("dist/a",))
    assert caught.value.exit_code == 1
    assert caught.value.hint is not None
    assert "--out" in caught.value.hint


def test_a_glob_skips_excluded_matches_and_fails_only_when_all_are(tmp_path: Path) -> None:
    context = make_context(tmp_path, {".dockerignore": "secret.*\n", "secret.txt": "", "notes.txt": ""})
    context_filter = load_filter(context, tmp_path / "out")
    copy = select(context_filter, ("*.txt",))
    assert copy.sources == (context / "notes.txt",)
    assert relative(context, copy.entries) == ["notes.txt"]
    with pytest.raises(BuildError, match=r"'secret\.\*' is excluded"):
        select(context_filter, ("secret.*",))


def test_an_excluded_symlink_out_of_the_context_is_no_error(tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx", {".dockerignore": "escape\n", "a": ""})
    (context / "escape").symlink_to("/etc")
    assert select(load_filter(context, tmp_path / "out"), (".",)).excluded == ("escape",)
    (context / ".dockerignore").write_text("")
    with pytest.raises(BuildError, match="pointing outside the build context"):
        select(load_filter(context, tmp_path / "out"), (".",))


LITERAL_NAMES = "plain.log|we[i]rd*| lead|trail |!bang|#hash|back\\slash|a^b|q?|br{1}+$|ü.txt|tab\there"


@pytest.mark.parametrize("name", LITERAL_NAMES.split("|"))
def test_a_literal_pattern_matches_its_name_only(name: str) -> None:
    rules = parse(literal_pattern(name) + "\n", "ignore")
    assert rules.excludes(name)
    assert rules.excludes(f"{name}/inside")
    for other in ("plain.lox", "weird", "weXrd*", "lead", "trail", "bang", "a", "qq", "br1+$", "u.txt"):
        assert not rules.excludes(other), other
