"""Failing safe: random interrupts, a full disk, hostile inputs, secrets kept out of logs."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from dualbuild.builder.storage import StorageOptions
from dualbuild.gpg import gpg_env
from dualbuild.leftovers import STORE_DIR
from tests.integration.helpers import DUALBUILD, buildah, dualbuild
from tests.integration.test_build_cli import RECIPE
from tests.support import HANG_SECONDS, require_root

# A build with every phase long enough to be hit: a run step, an emit of 24 MB of incompressible
# data (gzip for the ACI takes a while), then signing.
SLOW_RECIPE = RECIPE.replace(
    'run = "mkdir -p /out && echo ${WORD}build > /out/word"',
    'run = "mkdir -p /out && echo ${WORD}build > /out/word && head -c 24000000 /dev/urandom > /out/noise"',
).replace('copy = "/out/word"', 'copy = ["/out/word", "/out/noise"]')


COMPLETE = [
    "hello-2.0.0-linux-amd64.aci",
    "hello-2.0.0-linux-amd64.aci.asc",
    "hello-2.0.0-linux-amd64.docker.tar",
    "hello-2.0.0-linux-amd64.oci.tar",
    "hello-2.0.0-linux-amd64.report.json",
]


def _leftovers(storage: StorageOptions, out: Path) -> list[str]:
    found = [f"container {c}" for c in buildah(storage, "containers", "-q").split()]
    mounts = Path("/proc/self/mounts").read_text()
    found += [
        f"mount {line.split()[1]}"
        for line in mounts.splitlines()
        if "/merged" in line and str(storage.root) in line
    ]
    if out.exists():
        found += [f"file {p.name}" for p in out.iterdir() if p.name.startswith(".")]
    return found


def _buildah_temporaries() -> set[Path]:
    """What buildah and containers/storage make in TMPDIR (by default /var/tmp): buildahNNN, storageNNN."""
    return {*STORE_DIR.glob("buildah*"), *STORE_DIR.glob("storage*")}


@pytest.mark.slow
def test_random_interrupts_leave_nothing_behind(
    project: Path, cli_env: dict[str, str], buildah_storage: StorageOptions
) -> None:
    (project / "recipe.toml").write_text(SLOW_RECIPE)
    buildah_temporaries = _buildah_temporaries()
    chooser = random.Random(int(os.environ.get("DUALBUILD_INTERRUPT_SEED", "20261128")))
    rounds = int(os.environ.get("DUALBUILD_INTERRUPT_ROUNDS", "20"))
    # Signals land within the time one build takes on this machine, measured first.
    start = time.monotonic()
    reference = dualbuild(
        ["build", str(project / "recipe.toml"), "--no-cache", "--out", str(project / "ref")], cli_env
    )
    assert reference.returncode == 0, reference.stderr
    duration = time.monotonic() - start
    interrupted = attempt = 0
    # A build that was done before its signal came (the machine got faster since the reference)
    # took less than that wait: later rounds get less, and rounds go on until half were hit.
    while attempt < rounds or interrupted < rounds // 2:
        assert attempt < 4 * rounds, f"only {interrupted} of {attempt} builds were interrupted"
        out = project / f"out{attempt}"
        signum = signal.SIGINT if attempt % 2 else signal.SIGTERM
        process = subprocess.Popen(
            [DUALBUILD, "build", str(project / "recipe.toml"), "--no-cache", "--out", str(out)],
            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        first_line = process.stderr.readline()  # the build has begun: not Python's own start-up
        delay = chooser.uniform(0.0, 0.8 * duration)
        time.sleep(delay)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=HANG_SECONDS)
        text = first_line.decode() + stderr.decode()
        assert "Traceback" not in text
        if process.returncode == 0:
            assert sorted(p.name for p in out.iterdir()) == COMPLETE
            duration = min(duration, delay)
        else:
            interrupted += 1
            assert process.returncode == 128 + signum, text
            # Nothing, or (when the signal came as the build finished) the whole set.
            visible = sorted(p.name for p in out.iterdir()) if out.exists() else []
            assert visible in ([], COMPLETE), visible
        assert not _leftovers(buildah_storage, out), (attempt, _leftovers(buildah_storage, out))
        attempt += 1
    # buildah's own temporary folders (TMPDIR) go with the build's scratch folder.
    assert _buildah_temporaries() <= buildah_temporaries


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_rootfs_extraction_leaves_nothing(
    project: Path, cli_env: dict[str, str], buildah_storage: StorageOptions, tmp_path: Path, signum: int
) -> None:
    # A tar that reads nothing: the build waits in the extraction, its container made and mounted.
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    pid_file = tmp_path / "tar.pid"
    (fake / "tar").write_text(
        f"#!/bin/sh\necho $$ > {pid_file}.new\nmv {pid_file}.new {pid_file}\nexec sleep 600\n"
    )
    (fake / "tar").chmod(0o755)
    env = {**cli_env, "PATH": f"{fake}:{cli_env['PATH']}"}
    (project / "recipe.toml").write_text(RECIPE)
    process = subprocess.Popen(
        [DUALBUILD, "-vv", "build", str(project / "recipe.toml"), "--no-cache"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    seen = ""
    while f"+ {fake}/tar --extract" not in seen and (line := process.stderr.readline()):
        seen += line
    assert f"+ {fake}/tar --extract" in seen, seen
    # Once tar runs, the build is blocked feeding it, or waiting for it to finish.
    deadline = time.monotonic() + HANG_SECONDS
    while not pid_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists(), seen
    process.send_signal(signum)
    rest = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=HANG_SECONDS) == 128 + signum, seen + rest
    assert "interrupted" in rest
    assert "Traceback" not in rest
    assert not _leftovers(buildah_storage, project / "dist"), rest
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()  # tar was stopped


def runtime_leftovers() -> set[str]:
    """OCI runtime state, `runc init` processes and buildah cgroups on this machine."""
    found = {path for pattern in ("/run/runc/*", "/run/dualbuild-runtime-*") for path in glob.glob(pattern)}
    found |= {
        path
        for pattern in ("/sys/fs/cgroup/*/buildah-*", "/sys/fs/cgroup/buildah-*")
        for path in glob.glob(pattern)
    }
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = Path(cmdline).read_bytes().split(b"\0")
            if os.path.basename(argv[0]) == b"runc" and argv[1:2] == [b"init"]:
                found.add(f"process {cmdline.split('/')[2]} runc init")
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_between_the_runtimes_create_and_start_leaves_no_container(
    project: Path, cli_env: dict[str, str], buildah_storage: StorageOptions, tmp_path: Path, signum: int
) -> None:
    # buildah creates the step's container (a `runc init` waits), then starts it: a runc whose
    # start never returns holds the build in between, where buildah alone would leave it all.
    real = shutil.which("runc")
    assert real is not None
    started = tmp_path / "start-called"
    (tmp_path / "runc").write_text(
        f'#!/bin/sh\nfor arg; do [ "$arg" = start ] && {{ touch {started}; exec sleep 600; }}; done\n'
        f'exec {real} "$@"\n'
    )
    (tmp_path / "runc").chmod(0o755)
    (tmp_path / "containers.conf").write_text(f'[engine.runtimes]\nrunc = ["{tmp_path / "runc"}"]\n')
    env = {**cli_env, "CONTAINERS_CONF": str(tmp_path / "containers.conf")}
    (project / "recipe.toml").write_text(RECIPE)
    before = runtime_leftovers()
    process = subprocess.Popen(
        [DUALBUILD, "build", str(project / "recipe.toml"), "--no-cache", "--isolation", "runc"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + HANG_SECONDS
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), process.stderr.read() if process.stderr else ""
    assert runtime_leftovers() - before  # the created container is there, waiting
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=HANG_SECONDS)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert runtime_leftovers() - before == set()
    assert not _leftovers(buildah_storage, project / "dist"), stderr


def test_full_disk_is_a_clear_error_and_leaves_nothing(
    project: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    require_root()
    (project / "recipe.toml").write_text(SLOW_RECIPE)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        result = dualbuild(["build", str(project / "recipe.toml"), "--out", str(small / "dist")], cli_env)
        assert result.returncode == 1, result.stderr
        assert "No space left on device" in result.stderr
        assert "hello-2.0.0-linux-amd64." in result.stderr
        assert "Traceback" not in result.stderr
        assert not list((small / "dist").iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_docker_archive_pointing_outside_itself_is_refused(project: Path, cli_env: dict[str, str]) -> None:
    manifest = json.dumps(
        [{"Config": "../../etc/passwd", "RepoTags": ["evil:1"], "Layers": ["../../etc/shadow"]}]
    )
    with tarfile.open(project / "evil.tar", "w") as archive:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest.encode()))
    (project / "recipe.toml").write_text(
        '[image]\nname = "example.com/evil"\nversion = "1"\n[[stages]]\nfrom = "docker-archive:evil.tar"\n'
    )
    result = dualbuild(["build", str(project / "recipe.toml"), "--no-sign"], cli_env)
    assert result.returncode == 1, result.stderr
    assert "cannot use base" in result.stderr
    assert "Traceback" not in result.stderr


def test_odd_file_names_survive_in_both_formats(project: Path, cli_env: dict[str, str]) -> None:
    odd = project / "odd"
    odd.mkdir()
    (odd / "new\nline").write_text("newline\n")
    (odd / os.fsdecode(b"caf\xe9")).write_text("latin-1\n")
    (odd / ("x" * 200)).write_text("long\n")
    (project / "recipe.toml").write_text(
        '[image]\nname = "example.com/odd"\nversion = "1"\n[[stages]]\nfrom = "rootfs:busybox.tar"\n'
        '  [[stages.steps]]\n  copy = "odd/"\n  to = "/odd/"\n'
    )
    result = dualbuild(["build", str(project / "recipe.toml"), "--no-sign"], cli_env)
    assert result.returncode == 0, result.stderr
    with tarfile.open(project / "dist" / "odd-1-linux-amd64.aci", "r:gz") as archive:
        names = set(archive.getnames())
    assert "rootfs/odd/new\nline" in names
    assert "rootfs/odd/" + os.fsdecode(b"caf\xe9") in names or "rootfs/odd/caf\udce9" in names
    assert "rootfs/odd/" + "x" * 200 in names


def test_passphrase_never_appears_in_logs_or_report(
    project: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="dbp-", dir="/tmp"))
    home.chmod(0o700)
    secret = "correct horse battery staple 7431"
    env = gpg_env(home)
    subprocess.run(
        ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", secret, "--quick-generate-key",
         "Locked <locked@example.com>", "rsa2048", "sign", "0"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    (project / "recipe.toml").write_text(RECIPE)
    build_env = {
        **cli_env, "GNUPGHOME": str(home), "DUALBUILD_SIGN_KEY": "locked@example.com",
        "DUALBUILD_SIGN_PASSPHRASE": secret,
    }  # fmt: skip
    try:
        result = dualbuild(["-vv", "build", str(project / "recipe.toml"), "--json"], build_env)
        assert result.returncode == 0, result.stderr
        report = (project / "dist" / "hello-2.0.0-linux-amd64.report.json").read_text()
        for text in (result.stdout, result.stderr, report):
            assert secret not in text
            assert "correct horse" not in text
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)  # forget the cached passphrase
        wrong = dualbuild(
            ["build", str(project / "recipe.toml"), "--no-cache"],
            {**build_env, "DUALBUILD_SIGN_PASSPHRASE": "nope"},
        )
        assert wrong.returncode == 4, wrong.stderr
        assert "step" not in wrong.stderr
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_missing_gpg_is_refused_before_the_build(
    project: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    import shutil

    (project / "recipe.toml").write_text(RECIPE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("buildah", "runc"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    result = dualbuild(["build", str(project / "recipe.toml")], {**cli_env, "PATH": str(bin_dir)})
    assert result.returncode == 4, result.stderr
    assert "could not find 'gpg'" in result.stderr
    assert "hint: install gnupg, or build with --no-sign" in result.stderr
    assert "step" not in result.stderr
