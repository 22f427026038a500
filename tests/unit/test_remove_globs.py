"""`remove` with shell patterns: expanded inside the image's root, never through a link out of it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from dualbuild.builder.filesteps import expand_pattern, remove_path


def tree(root: Path, *paths: str) -> Path:
    for path in paths:
        target = root / path.lstrip("/")
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path)
    return root


def listing(root: Path) -> list[str]:
    found = []
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append("/" + os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tree(
        tmp_path / "root",
        "/usr/lib/python3/app/__pycache__/a.pyc",
        "/usr/lib/python3/app/mod.py",
        "/usr/lib/python3/__pycache__/b.pyc",
        "/usr/lib/python3/.hidden/__pycache__/c.pyc",
        "/usr/share/doc/pkg-a/copyright",
        "/usr/share/doc/pkg-b/README",
        "/usr/share/doc/keep",
        "/var/cache/apt/archives/x.deb",
        "/var/cache/apt/pkgcache.bin",
        "/var/cache/apt/.lock",
    )


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("/usr/share/doc/pkg-*", ["/usr/share/doc/pkg-a", "/usr/share/doc/pkg-b"]),
        ("/usr/share/doc/pkg-?/*", ["/usr/share/doc/pkg-a/copyright", "/usr/share/doc/pkg-b/README"]),
        ("/usr/share/doc/pkg-[!a]", ["/usr/share/doc/pkg-b"]),
        ("/var/cache/apt/*", ["/var/cache/apt/archives", "/var/cache/apt/pkgcache.bin"]),  # not .lock
        ("/var/cache/apt/.*", ["/var/cache/apt/.lock"]),
        # ** is any number of directories, none included; hidden ones are not entered
        ("/usr/lib/**/__pycache__", ["/usr/lib/python3/__pycache__", "/usr/lib/python3/app/__pycache__"]),
        ("/usr/**/*.pyc", ["/usr/lib/python3/__pycache__/b.pyc", "/usr/lib/python3/app/__pycache__/a.pyc"]),
        # a trailing ** is what is inside, once (not the directory itself)
        ("/usr/share/doc/**", ["/usr/share/doc/keep", "/usr/share/doc/pkg-a", "/usr/share/doc/pkg-b"]),
        ("/nothing/*", []),
    ],
)
def test_patterns_expand_as_the_shell_expands_them(root: Path, pattern: str, expected: list[str]) -> None:
    assert expand_pattern(root, pattern) == expected


def test_a_remove_pattern_removes_every_match(root: Path) -> None:
    remove_path(root, "/usr/lib/**/__pycache__")
    remove_path(root, "/usr/share/doc/pkg-*")
    assert [path for path in listing(root) if path.startswith(("/usr/lib", "/usr/share"))] == [
        "/usr/lib",
        "/usr/lib/python3",
        "/usr/lib/python3/.hidden",
        "/usr/lib/python3/.hidden/__pycache__",
        "/usr/lib/python3/.hidden/__pycache__/c.pyc",
        "/usr/lib/python3/app",
        "/usr/lib/python3/app/mod.py",
        "/usr/share",
        "/usr/share/doc",
        "/usr/share/doc/keep",
    ]


def test_a_pattern_matching_nothing_is_no_error_and_says_so(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dualbuild"):
        remove_path(root, "/var/log/*.log")
    assert "remove /var/log/*.log: nothing matches the pattern" in caplog.text


def test_a_file_named_like_a_pattern_is_removed_when_nothing_else_matches(root: Path) -> None:
    tree(root, "/opt/a[1]")
    remove_path(root, "/opt/a[1]")
    assert not (root / "opt" / "a[1]").exists()


def test_patterns_never_leave_the_root(tmp_path: Path) -> None:
    outside = tree(tmp_path / "host", "/etc/passwd", "/etc/shadow")
    root = tree(tmp_path / "root", "/etc/hostname")
    os.symlink(str(outside / "etc"), root / "hostetc")  # a host path: inside the image it is /host…/etc
    os.symlink("/etc", root / "up")  # absolute: the image's /etc
    os.symlink("../../../..", root / "dots")
    assert expand_pattern(root, "/hostetc/*") == []
    assert expand_pattern(root, "/up/*") == ["/up/hostname"]
    assert expand_pattern(root, "/dots/etc/*") == ["/dots/etc/hostname"]
    remove_path(root, "/dots/etc/*")
    remove_path(root, "/*/passwd")
    assert sorted(os.listdir(outside / "etc")) == ["passwd", "shadow"]
    assert not (root / "etc" / "hostname").exists()


def test_globstar_does_not_follow_symlinks(tmp_path: Path) -> None:
    root = tree(tmp_path / "root", "/data/real/x.tmp")
    os.symlink("/data/real", root / "data" / "link")
    assert expand_pattern(root, "/data/**/*.tmp") == ["/data/real/x.tmp"]
