"""Cache folders of run steps (``cache = [...]``, recipe format v1.1) with real buildah builds.

A cache folder is kept between builds on this machine and bound into the step that names it;
it is never in a layer or a cache key, `dualbuild cache ls` / `prune` see it, and a
``sharing = "locked"`` one is used by one step at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbuild.builder import cachemounts
from dualbuild.builder.storage import StorageOptions
from dualbuild.recipe.model import CacheMount, CacheSharing
from tests.integration.helpers import DUALBUILD, Builder, dualbuild, write_recipe
from tests.support import HANG_SECONDS, require_tools

ARCH = "amd64"
APPEND = "echo build >> {dir}/log && echo lines=$(cat {dir}/log | wc -l)"


def _busybox_recipe(directory: Path, steps: str, name: str = "example.com/cachemounts") -> Path:
    return write_recipe(
        directory,
        f'[[stages]]\nfrom = "rootfs:busybox.tar"\n{steps}\n[output]\nformats = ["docker"]\n',
        name=name,
    )


def _run_step(command: str, cache: str) -> str:
    return f"  [[stages.steps]]\n  run = {json.dumps(command)}\n  cache = {cache}\n"


def _cache_dir(cli_env: dict[str, str]) -> Path:
    return Path(cli_env["XDG_CACHE_HOME"]) / "dualbuild"


def _step_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " step " in line and line.startswith("[")]


def _counts(output: str) -> list[int]:
    return [int(count) for count in re.findall(r"lines=\s*(\d+)", output)]


def _image_members(dist: Path) -> set[str]:
    """Every path in every layer of the docker-archive in ``dist``."""
    names: set[str] = set()
    with tarfile.open(next(dist.glob("*.docker.tar"))) as archive:
        manifest = archive.extractfile("manifest.json")
        assert manifest is not None
        for layer in json.loads(manifest.read())[0]["Layers"]:
            blob = archive.extractfile(layer)
            assert blob is not None
            with tarfile.open(fileobj=blob) as tree:
                names.update(member.name.removeprefix("./").rstrip("/") for member in tree.getmembers())
    return names


@contextlib.contextmanager
def _locked(lock_file: Path, operation: int) -> Iterator[int]:
    lock = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, operation)
        yield lock
    finally:
        os.close(lock)


def test_cache_folder_persists_between_builds_and_stays_out_of_image_and_key(
    project: Path, cli_env: dict[str, str]
) -> None:
    recipe = _busybox_recipe(project, _run_step(APPEND.format(dir="/var/cache/demo"), '["/var/cache/demo"]'))
    folder = cachemounts.directory_of(_cache_dir(cli_env), CacheMount(target="/var/cache/demo"), ARCH)

    first = dualbuild(["build", str(recipe)], cli_env)
    assert first.returncode == 0, first.stderr
    assert _counts(first.stderr) == [1]
    # The step reruns (--no-cache) and sees what the first build left in the folder.
    second = dualbuild(["build", str(recipe), "--no-cache"], cli_env)
    assert second.returncode == 0, second.stderr
    assert _step_lines(second.stderr)[0].endswith("[run: --no-cache]")
    assert _counts(second.stderr) == [2]
    assert (folder / "log").read_text() == "build\nbuild\n"

    members = _image_members(project / "dist")
    assert "var" in members  # busybox.tar has /var but no /var/cache: the runtime's stubs are gone
    assert not [name for name in members if name == "var/cache" or name.startswith("var/cache/")]
    assert not [name for name in members if name.endswith("/log") or name == "log"]

    # What the cache holds is no input of the step: changed, the step still comes from the cache.
    with (folder / "log").open("a") as log:
        log.write("from the host\n")
    for artifact in (project / "dist").iterdir():
        artifact.unlink()  # else the build is "up to date" without looking at its steps
    third = dualbuild(["build", str(recipe)], cli_env)
    assert third.returncode == 0, third.stderr
    lines = _step_lines(third.stderr)
    assert lines
    assert all(line.endswith("[cached]") for line in lines), lines
    assert _counts(third.stderr) == []
    assert (folder / "log").read_text() == "build\nbuild\nfrom the host\n"


def test_id_shares_a_folder_between_targets_and_recipes(
    buildah_storage: StorageOptions, context: Path, tmp_path: Path
) -> None:
    builder = Builder(buildah_storage, tmp_path / "cache" / "dualbuild")
    one, two, three = (context / name for name in ("one", "two", "three"))
    for directory in (one, two, three):
        directory.mkdir()
        (directory / "busybox.tar").hardlink_to(context / "busybox.tar")
    # By id: two recipes, two targets, one folder.
    first = _busybox_recipe(
        one,
        _run_step(APPEND.format(dir="/srv/a"), '[{ target = "/srv/a", id = "shared-id" }]'),
        "example.com/one",
    )
    second = _busybox_recipe(
        two,
        _run_step(APPEND.format(dir="/opt/b/c"), '[{ target = "/opt/b/c", id = "shared-id" }]'),
        "example.com/two",
    )
    # Without an id the target is the id: this one shares the folder of /srv/a's id "/srv/a"...
    by_target = _busybox_recipe(
        three,
        _run_step(APPEND.format(dir="/srv/a"), '["/srv/a"]')
        + _run_step(APPEND.format(dir="/mnt/x"), '[{ target = "/mnt/x", id = "/srv/a" }]'),
        "example.com/three",
    )
    with builder.build(first):
        pass
    with builder.build(second):
        pass
    assert _counts("\n".join(builder.output)) == [1, 2]
    with builder.build(by_target):
        pass
    # ... not "shared-id"'s (which held 2 lines), and the step naming id "/srv/a" sees its line.
    assert _counts("\n".join(builder.output)) == [1, 2, 1, 2]

    folders = {entry.id: entry for entry in cachemounts.listing(builder.cache_dir)}
    assert set(folders) == {"shared-id", "/srv/a"}
    assert (folders["shared-id"].path / "log").read_text() == "build\nbuild\n"
    assert folders["shared-id"].path == cachemounts.directory_of(
        builder.cache_dir, CacheMount(target="/anywhere", id="shared-id"), ARCH
    )
    assert not builder.containers()


def test_each_arch_has_its_own_folder(tmp_path: Path) -> None:
    mount = CacheMount(target="/var/cache/apt")
    amd64, arm64 = (cachemounts.directory_of(tmp_path, mount, arch) for arch in ("amd64", "arm64"))
    assert amd64 != arm64
    assert amd64.parent == arm64.parent == tmp_path / cachemounts.MOUNTS_DIR
    assert cachemounts.directory_of(tmp_path, CacheMount(target="/x", id="/var/cache/apt"), "amd64") == amd64


def test_cache_ls_lists_and_prune_removes_folders_nobody_holds(
    project: Path, cli_env: dict[str, str]
) -> None:
    recipe = _busybox_recipe(
        project, _run_step(APPEND.format(dir="/cache"), '[{ target = "/cache", id = "listed-id" }]')
    )
    folder = cachemounts.directory_of(_cache_dir(cli_env), CacheMount(target="/cache", id="listed-id"), ARCH)
    built = dualbuild(["build", str(recipe)], cli_env)
    assert built.returncode == 0, built.stderr
    assert (folder / "log").is_file()

    listing = dualbuild(["cache", "ls"], cli_env)
    assert listing.returncode == 0, listing.stderr
    assert [line for line in listing.stdout.splitlines() if "listed-id" in line and "cache-mount" in line]

    # A build using it holds its lock: prune leaves it (and says it removed no folder).
    with _locked(folder.with_suffix(".lock"), fcntl.LOCK_SH):
        held = dualbuild(["cache", "prune"], cli_env)
        assert held.returncode == 0, held.stderr
        assert "cache folder" not in held.stdout, held.stdout
        assert (folder / "log").read_text() == "build\n"
        assert "listed-id" in dualbuild(["cache", "ls"], cli_env).stdout

    pruned = dualbuild(["cache", "prune"], cli_env)
    assert pruned.returncode == 0, pruned.stderr
    assert "and 1 cache folder" in pruned.stdout, pruned.stdout
    assert not folder.exists()
    assert not folder.with_suffix(".json").exists()
    assert "listed-id" not in dualbuild(["cache", "ls"], cli_env).stdout
    assert cachemounts.listing(_cache_dir(cli_env)) == []


def _waiting_on(lock: int, pid: int) -> bool:
    """Whether process ``pid`` is blocked in flock on the file open as ``lock`` (/proc/locks's "->")."""
    inode = os.fstat(lock).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:
            waiter = fields[fields.index("->") + 1 :]  # FLOCK ADVISORY WRITE PID MAJ:MIN:INODE ...
            if waiter[0] == "FLOCK" and int(waiter[3]) == pid and int(waiter[4].rsplit(":", 1)[1]) == inode:
                return True
    return False


def _wait_until_waiting(process: subprocess.Popen[bytes], lock: int, log_file: Path) -> None:
    """Until the kernel says ``process`` is queued on ``lock``: no guess at how long that takes."""
    for _ in range(HANG_SECONDS * 10):
        if _waiting_on(lock, process.pid):
            return
        assert process.poll() is None, f"the build did not wait:\n{log_file.read_text()}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
    pytest.fail(f"the build never waited on the lock:\n{log_file.read_text()}")


def _locked_build(project: Path, cli_env: dict[str, str], sharing: CacheSharing) -> tuple[Path, Path, Path]:
    """A recipe whose step writes out into a cache folder of ``sharing``; its folder and lock file."""
    target = f"/cache/{sharing}"
    mount = f'[{{ target = "{target}", id = "lock-{sharing}", sharing = "{sharing}" }}]'
    recipe = _busybox_recipe(project, _run_step(f"echo ran > {target}/out", mount))
    folder = cachemounts.directory_of(
        _cache_dir(cli_env), CacheMount(target=target, id=f"lock-{sharing}", sharing=sharing), ARCH
    )
    folder.mkdir(parents=True)
    return recipe, folder, folder.with_suffix(".lock")


@contextlib.contextmanager
def _started(recipe: Path, cli_env: dict[str, str], log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A build running in the background; killed if the test leaves before it ended."""
    with log_file.open("w") as log:
        process = subprocess.Popen(
            # --no-cache: the step must run (the suite's step cache may hold it from another test).
            [DUALBUILD, "build", str(recipe), "--no-cache"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.mark.parametrize("sharing", [CacheSharing.LOCKED, CacheSharing.SHARED])
def test_locked_cache_waits_for_whoever_holds_it(
    project: Path, cli_env: dict[str, str], sharing: CacheSharing
) -> None:
    recipe, folder, lock_file = _locked_build(project, cli_env, sharing)
    log_file = project / "build.log"
    # Another build using the folder shared: a "locked" step must wait for it, a "shared" one
    # not. (Held exclusively, both would wait: that would not tell "locked" from "shared".)
    with contextlib.ExitStack() as holding:
        lock = holding.enter_context(_locked(lock_file, fcntl.LOCK_SH))
        with _started(recipe, cli_env, log_file) as process:
            if sharing is CacheSharing.SHARED:
                assert process.wait(timeout=HANG_SECONDS) == 0, log_file.read_text()
                assert (folder / "out").read_text() == "ran\n"
                return
            _wait_until_waiting(process, lock, log_file)
            assert "step 1/1 run echo ran" in log_file.read_text()
            assert process.poll() is None
            assert not (folder / "out").exists()
            holding.close()  # the other build is done with it
            assert process.wait(timeout=HANG_SECONDS) == 0, log_file.read_text()
    assert (folder / "out").read_text() == "ran\n"


def test_locked_cache_waits_again_when_a_prune_removed_the_lock_it_waited_on(
    project: Path, cli_env: dict[str, str]
) -> None:
    recipe, folder, lock_file = _locked_build(project, cli_env, CacheSharing.LOCKED)
    log_file = project / "build.log"
    with contextlib.ExitStack() as holding:
        pruning = holding.enter_context(_locked(lock_file, fcntl.LOCK_EX))
        with _started(recipe, cli_env, log_file) as process:
            _wait_until_waiting(process, pruning, log_file)
            # What `cache prune` does holding the lock: the folder, its note and its lock file go.
            folder.rmdir()
            lock_file.unlink()
            # Then another build takes the "locked" cache anew, before the waiting one wakes up.
            newcomer = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(newcomer, fcntl.LOCK_EX)
            holding.close()  # the prune is over
            try:
                _wait_until_waiting(process, newcomer, log_file)  # not running beside the newcomer
                assert not (folder / "out").exists()
            finally:
                os.close(newcomer)
            assert process.wait(timeout=HANG_SECONDS) == 0, log_file.read_text()
    assert (folder / "out").read_text() == "ran\n"


# Mirrors containers/buildah#5400 ("buildah never invalidates the cache of a RUN
# --mount=type=bind layer"): there a step that reads files it did not copy (a bind of the context;
# the same for a bind from another stage, #4522 / #6609) was taken from the cache after those
# files changed. Here the file reaches the final stage from stage A, which copied it from the
# context; the step that reads it has a cache mount, like the reproducer's second half. When
# input.txt changes, stage A's copy, the final copy and the run step must all run again.
STAGES = """
[[stages]]
name = "A"
from = "rootfs:busybox.tar"
  [[stages.steps]]
  copy = "input.txt"
  to = "/input.txt"

[[stages]]
name = "final"
from = "rootfs:busybox.tar"
  [[stages.steps]]
  copy = "/input.txt"
  from = "A"
  to = "/input.txt"
  [[stages.steps]]
  run = "cat /input.txt > /out && echo seen=$(cat /input.txt)"
  cache = ["/var/cache/stages"]

[output]
formats = ["docker"]
"""


def test_step_reading_another_stages_file_reruns_when_it_changes(
    project: Path, cli_env: dict[str, str]
) -> None:
    recipe = write_recipe(project, STAGES, name="example.com/stages")
    (project / "input.txt").write_text("first\n")
    first = dualbuild(["build", str(recipe)], cli_env)
    assert first.returncode == 0, first.stderr
    assert "seen=first" in first.stderr

    (project / "input.txt").write_text("second\n")
    second = dualbuild(["build", str(recipe)], cli_env)
    assert second.returncode == 0, second.stderr
    lines = _step_lines(second.stderr)
    assert len(lines) == 3, lines
    assert lines[0].endswith("[run: input changed: input.txt]"), lines
    assert not lines[1].endswith("[cached]"), lines
    assert not lines[2].endswith("[cached]"), lines
    assert "seen=second" in second.stderr
    with tarfile.open(next((project / "dist").glob("*.docker.tar"))) as archive:
        manifest = archive.extractfile("manifest.json")
        assert manifest is not None
        last = archive.extractfile(json.loads(manifest.read())[0]["Layers"][-1])
        assert last is not None
        with tarfile.open(fileobj=last) as layer:
            out = layer.extractfile(next(m for m in layer.getmembers() if m.name.lstrip("./") == "out"))
            assert out is not None
            assert out.read() == b"second\n"


DEBIAN = """
[[stages]]
from = { bootstrap = "debian", suite = "bookworm", variant = "minbase" }
  [[stages.steps]]
  run = "apt-get update && apt-get install -y --no-install-recommends hello"
  cache = ["/var/cache/apt"]
"""


@pytest.mark.slow
def test_apt_cache_folder_saves_the_second_download(tmp_path: Path, cli_env: dict[str, str]) -> None:
    require_tools("mmdebstrap")
    recipe = write_recipe(tmp_path, DEBIAN, name="example.com/apt-cache")
    folder = cachemounts.directory_of(_cache_dir(cli_env), CacheMount(target="/var/cache/apt"), ARCH)
    first = dualbuild(["build", str(recipe), "--no-cache"], cli_env, timeout=900)
    assert first.returncode == 0, first.stderr
    assert list((folder / "archives").glob("hello_*.deb"))
    bootstraps = list((_cache_dir(cli_env) / "bootstrap").glob("bookworm-minbase-*.tar"))
    assert len(bootstraps) == 1
    stamp = bootstraps[0].stat().st_mtime_ns

    second = dualbuild(["build", str(recipe), "--no-cache"], cli_env, timeout=900)
    assert second.returncode == 0, second.stderr
    assert bootstraps[0].stat().st_mtime_ns == stamp  # the base was not bootstrapped again
    assert _step_lines(second.stderr)[0].endswith("[run: --no-cache]")

    hello_get = re.compile(r"^  \| Get:\d+ \S+ bookworm/main amd64 hello amd64 ", re.MULTILINE)
    assert hello_get.search(first.stderr), first.stderr
    assert not hello_get.search(second.stderr), second.stderr
    assert "Need to get 0 B/" in second.stderr, second.stderr
    members = _image_members(tmp_path / "dist")
    assert "usr/bin/hello" in members
    assert not [name for name in members if name.startswith("var/cache/apt/") and name.endswith(".deb")]
