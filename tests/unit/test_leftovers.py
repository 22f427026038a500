"""What a killed dualbuild process left is found by the PID in its name, and only that is removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualbuild import leftovers
from dualbuild.files import scratch_directory, temporary_name
from tests.unit.conftest import FakeRun

GONE = 2**22  # PIDs are below pid_max, which is at most 2**22


def test_only_what_dead_processes_left_is_removed(
    fake_run: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = [
        tmp_path / f"dualbuild-aci-{GONE}-x1y2",
        tmp_path / f".dualbuild-{GONE}",
        tmp_path / f".tmp-{GONE}-hello.docker.tar",
        tmp_path / f"dualbuild-gpg-{GONE}-k3y",
        tmp_path / f"dualbuild-store-{GONE}-st0",
    ]
    kept = [
        tmp_path / f"dualbuild-aci-{os.getpid()}-mine",  # ours, in use
        tmp_path / ".dualbuild-1",  # init is alive
        tmp_path / f"dualbuild-aci-{GONE + 1}-nopid",  # not a PID at all
        tmp_path / "dualbuild-notes",
        tmp_path / "hello.docker.tar",
    ]
    for path in dead + kept:
        if path.suffix == ".tar":
            path.write_bytes(b"partial")
        else:
            (path / "inside").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / f".tmp-{GONE}-link").symlink_to(outside)  # a link is removed, never followed
    store_overlay = dead[4] / "root" / "overlay"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"36 35 98:0 / /mnt1 rw - ext3 /dev/root rw\n37 35 0:5 / {store_overlay} rw - overlay x rw\n"
    )
    monkeypatch.setattr(leftovers, "MOUNTINFO", mountinfo)
    fake_run.answer("umount", behaviour=lambda argv: (mountinfo.write_text(""), (0, "", ""))[1])
    removed = leftovers.reclaim([tmp_path], outputs=[tmp_path])
    assert sorted(removed) == sorted([*dead, tmp_path / f".tmp-{GONE}-link"])
    assert all(not os.path.lexists(path) for path in removed)
    assert all(path.exists() for path in [*kept, outside])
    # A keyring's agent is stopped and a store's overlay unmounted before their folder goes.
    assert ["gpgconf", "--homedir", os.fspath(dead[3]), "--kill", "all"] in fake_run.calls
    assert fake_run.of("umount") == [["umount", "-R", os.fspath(store_overlay)]]


def test_a_folder_that_stays_mounted_is_left_in_place(
    fake_run: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = tmp_path / f"dualbuild-buildah-{GONE}-t1"
    (dead / "buildah123" / "mnt").mkdir(parents=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"37 35 0:5 / {dead / 'buildah123' / 'mnt'} rw - tmpfs x rw\n")
    monkeypatch.setattr(leftovers, "MOUNTINFO", mountinfo)
    leftovers.reclaim([tmp_path])
    assert fake_run.of("umount") == [["umount", "-R", os.fspath(dead / "buildah123" / "mnt")]]
    assert (dead / "buildah123" / "mnt").is_dir()  # never deleted through a mount


def test_the_names_dualbuild_gives_its_scratch_say_whose_it_is(tmp_path: Path) -> None:
    with scratch_directory("push", tmp_path) as scratch:
        assert leftovers.owner_pid(scratch.name) == os.getpid()
        assert scratch.name.startswith(f"dualbuild-push-{os.getpid()}-")
    assert leftovers.owner_pid(temporary_name(tmp_path / "x.aci").name) == os.getpid()
    assert leftovers.owner_pid(f".dualbuild-{os.getpid()}") == os.getpid()
    assert leftovers.owner_pid("dualbuild-1.0.0.aci") is None


def test_in_a_temporary_folder_only_scratch_folders_are_ours(fake_run: FakeRun, tmp_path: Path) -> None:
    scratch = tmp_path / f"dualbuild-push-{GONE}-a1"
    scratch.mkdir()
    theirs = [tmp_path / f".tmp-{GONE}-something", tmp_path / f".dualbuild-{GONE}"]
    for path in theirs:
        path.write_text("another program's")
    assert leftovers.reclaim([tmp_path]) == [scratch]
    assert all(path.exists() for path in theirs)
    assert fake_run.calls == []


def test_commands_a_dead_build_started_are_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def process(pid: int, argv: list[str], environ: list[str]) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(map(os.fsencode, argv)) + b"\0")
        (tmp_path / str(pid) / "environ").write_bytes(b"\0".join(map(os.fsencode, environ)) + b"\0")

    store = leftovers.STORE_DIR
    process(101, ["buildah", "from", "--name", f"dualbuild-{GONE}-ab12cd34-0-final", "scratch"], [])
    process(102, ["/usr/bin/buildah", "pull", "x"], [f"TMPDIR={store}/dualbuild-buildah-{GONE}-q1"])
    process(103, ["buildah", "from", "--name", f"dualbuild-{os.getpid()}-ab12cd34-0-final", "scratch"], [])
    process(104, ["buildah", "pull", "x"], [f"TMPDIR={store}/dualbuild-buildah-{os.getpid()}-q2"])
    # Not ours: another program naming a file like ours, a name without our session's form.
    process(105, ["tail", "-f", f"dualbuild-{GONE}-ab12cd34-0-final"], [])
    process(
        106,
        ["buildah", "inspect", f"dualbuild-{GONE}-build.log"],
        [f"TMPDIR=/tmp/dualbuild-buildah-{GONE}-x"],
    )
    (tmp_path / "self").mkdir()
    killed: list[int] = []
    monkeypatch.setattr(leftovers, "PROC", tmp_path)
    monkeypatch.setattr(leftovers.os, "kill", lambda pid, signal: killed.append(pid))
    monkeypatch.setattr(leftovers.run, "process_gone", lambda pid: pid == GONE)
    assert leftovers.kill_commands_of_dead_processes("dualbuild-") == 2
    assert sorted(killed) == [101, 102]
