"""Stages of file steps built in memory: the trees, layers and artifacts of extracting the base.

The base is never extracted (builder/held.py): its tarball is indexed, the file steps are done on
the tree in memory, the emitters read the bytes where they lie in the archive. Every check here
builds or walks both ways and compares: GNU tar + the kernel against the memory tree, and
`dualbuild build` against `dualbuild build --extract-base`, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import time
from pathlib import Path

import pytest

from dualbuild.builder.basetree import NotHeld, rootfs_tree
from dualbuild.builder.filesteps import (
    DiskRoot,
    StepRoot,
    make_directory,
    make_symlink,
    remove_path,
    write_file,
)
from dualbuild.builder.heldroot import HeldRoot
from dualbuild.builder.tarballs import extract_checked
from dualbuild.errors import BuildError
from dualbuild.layer.archivefiles import ArchiveFiles
from dualbuild.layer.diff import changes
from dualbuild.layer.feed import DirectLayer
from dualbuild.layer.tree import Tree, snapshot
from tests.integration.helpers import Docker, dualbuild
from tests.support import require_root, require_tools

# Below every mtime a step gives (now), above most of the base's: both clamps are exercised.
EPOCH = int(time.time()) - 3600
PASSWD = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"


def _add(
    archive: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: object
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = int(fields.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644))  # type: ignore[call-overload]
    info.mtime = int(fields.pop("mtime", 1_600_000_000))  # type: ignore[call-overload]
    for key, value in fields.items():
        setattr(info, key, value)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def base_tarball(path: Path) -> Path:
    """A rootfs of every shape the memory tree must get right."""
    big = random.Random(7).randbytes(3 << 20)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "./", tarfile.DIRTYPE, mode=0o755)
        for name in ("etc", "usr", "usr/bin", "usr/lib", "usr/share", "usr/share/doc", "dev", "var"):
            _add(archive, f"./{name}/", tarfile.DIRTYPE)
        _add(archive, "./tmp/", tarfile.DIRTYPE, mode=0o1777)
        _add(archive, "./var/empty/", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000, mtime=EPOCH + 500)
        _add(archive, "./etc/passwd", data=PASSWD, mtime=EPOCH + 100)
        _add(archive, "./etc/group", data=b"root:x:0:\napp:x:1000:\n")
        _add(archive, "./etc/later", data=b"from the future", mtime=EPOCH + 10_000)
        _add(archive, "./usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755)
        _add(archive, "./usr/bin/a", data=b"shared inode\n")
        _add(archive, "./usr/bin/b", tarfile.LNKTYPE, linkname="usr/bin/a")
        _add(archive, "./usr/bin/c", tarfile.LNKTYPE, linkname="usr/bin/a")
        _add(archive, "./usr/bin/run.sh", data=b"#!/bin/sh\n", mode=0o755)
        _add(archive, "./usr/bin/x.sh", data=b"#!/bin/sh\n", mode=0o755)
        _add(archive, "./usr/lib/big.bin", data=big)
        noted = tarfile.TarInfo("./usr/lib/noted")
        noted.pax_headers = {"SCHILY.xattr.user.note": "kept", "SCHILY.xattr.trusted.x": "dropped"}
        noted.size, noted.mtime = 4, 1_600_000_000
        archive.addfile(noted, io.BytesIO(b"note"))
        capped = tarfile.TarInfo("./usr/bin/ping")
        # security.capability v2: cap_net_raw effective and permitted.
        capped.pax_headers = {
            "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
        }
        capped.size, capped.mode, capped.mtime = 5, 0o755, 1_600_000_000
        archive.addfile(capped, io.BytesIO(b"ping\n"))
        _add(archive, "./usr/share/doc/README", data=b"docs\n")
        _add(archive, "./usr/share/doc/COPYING", data=b"copying\n")
        _add(archive, "./etc/alternatives", tarfile.SYMTYPE, linkname="/usr/bin")
        _add(archive, "./lib", tarfile.SYMTYPE, linkname="usr/lib")
        _add(archive, "./etc/dangling", tarfile.SYMTYPE, linkname="/nowhere/file")
        _add(archive, "./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        _add(archive, "./dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0)
        _add(archive, "./dev/fifo", tarfile.FIFOTYPE, mode=0o600)
    return path


def steps(root: StepRoot | Path) -> None:
    """File steps of every kind, through symlinks, over hard links and capabilities."""
    write_file(root, "/etc/motd", b"hello\n", mode=0o644, owner=None)
    write_file(
        root, "/etc/alternatives/added", b"through an absolute symlink\n", mode=0o755, owner="1000:1000"
    )
    write_file(root, "/usr/bin/ping", b"pong\n", mode=0o755, owner=None)
    write_file(root, "/etc/passwd", PASSWD, mode=0o644, owner=None)
    write_file(root, "/opt/app/deep/config", b"made with its parents\n", mode=0o600, owner=None)
    make_directory(root, "/var/empty", parents=False, mode=0o711, owner="0:0")
    make_directory(root, "/srv/data/cache", parents=True, mode=0o2775, owner="1000:1000")
    make_symlink(root, "/usr/local/bin/tool", "/usr/bin/tool")
    remove_path(root, "/usr/bin/*.sh")
    remove_path(root, "/usr/share/doc")
    remove_path(root, "/etc/dangling")


def layer_bytes(tree: Tree) -> bytes:
    """The tar of a tree as the emitters write it (every file's bytes read)."""
    out = io.BytesIO()
    DirectLayer(tree, prefix="", mtime_clamp=tree.source_date_epoch).write_to(out)
    return out.getvalue()


def test_the_memory_tree_is_the_tree_gnu_tar_and_the_kernel_make(tmp_path: Path) -> None:
    require_root()
    tarball = base_tarball(tmp_path / "base.tar")
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for root in (lower, upper):
        root.mkdir()
        extract_checked(tarball, root, "rootfs tarball")
    files = ArchiveFiles()
    try:
        held = rootfs_tree(tarball, tmp_path, files)
        assert list(held.tree(EPOCH).entries) == list(snapshot(lower, EPOCH).entries)
        assert layer_bytes(held.tree(EPOCH)) == layer_bytes(snapshot(lower, EPOCH))
        below = held.snapshot()
        steps(DiskRoot(upper))
        steps(HeldRoot(held))
        # The whole tree after the steps, and the layer they make, entry for entry and byte for byte.
        assert list(held.tree(EPOCH).entries) == list(snapshot(upper, EPOCH).entries)
        assert layer_bytes(held.tree(EPOCH)) == layer_bytes(snapshot(upper, EPOCH))
        held_layer = list(held.changes(below, EPOCH).entries)
        assert held_layer == list(changes(lower, upper, EPOCH).entries)
        assert layer_bytes(held.changes(below, EPOCH)) == layer_bytes(changes(lower, upper, EPOCH))
        # What the layer says: the doc directory emptied (opaque), the removed names whited
        # out, the capability dropped with the rewrite.
        by_path = {entry.path: entry for entry in held_layer}
        assert {"usr/share/.wh..wh..opq", "usr/bin/.wh.run.sh", "etc/.wh.dangling"} <= set(by_path)
        assert by_path["usr/bin/ping"].xattrs == ()
        assert "etc/passwd" not in by_path  # rewritten with its bytes and, clamped, its mtime
        # The tree below was not changed by the steps done after its snapshot.
        assert list(below.tree(EPOCH).entries) == list(snapshot(lower, EPOCH).entries)
        # A file with several names is left to the extracting build: on a mounted root, what a
        # change to it does depends on the layer it lies in.
        for change in (
            lambda root: write_file(root, "/usr/bin/b", b"x", mode=0o644, owner=None),
            lambda root: remove_path(root, "/usr/bin/c"),
            lambda root: remove_path(root, "/usr"),
        ):
            with pytest.raises(NotHeld, match="has hard links"):
                change(HeldRoot(held))
    finally:
        files.close()


def test_a_step_that_fails_fails_alike_on_both_roots(tmp_path: Path) -> None:
    require_root()
    tarball = base_tarball(tmp_path / "base.tar")
    (tmp_path / "disk").mkdir()
    extract_checked(tarball, tmp_path / "disk", "rootfs tarball")
    files = ArchiveFiles()
    roots: list[StepRoot] = [DiskRoot(tmp_path / "disk"), HeldRoot(rootfs_tree(tarball, tmp_path, files))]
    make_symlink(roots[0], "/etc/motd-link", "x")
    make_symlink(roots[1], "/etc/motd-link", "x")
    attempts = [
        lambda root: write_file(root, "/usr", b"", mode=0o644, owner=None),
        lambda root: make_directory(root, "/etc/passwd", parents=False, mode=0o755, owner=None),
        lambda root: make_directory(root, "/no/parent", parents=False, mode=0o755, owner=None),
        lambda root: make_symlink(root, "/etc/motd-link", "y"),
        lambda root: remove_path(root, "/not/there"),
        lambda root: remove_path(root, "/"),
    ]
    failures: list[list[str]] = []
    for root in roots:
        found = []
        for attempt in attempts:
            with pytest.raises(BuildError) as error:
                attempt(root)
            found.append(error.value.message)
        failures.append(found)
    files.close()
    assert failures[0] == failures[1]


# --- whole builds, both ways -----------------------------------------------------------------

RECIPE = """\
[image]
name = "example.com/held"
version = "1.0.0"
{stages}
[app]
entrypoint = ["/bin/sh", "-c"]
cmd = ["cat /etc/motd /opt/app/config; ls /bin/cat 2>&1; id -u"]
user = "{user}"

[output]
formats = ["docker", "oci", "aci"]
source_date_epoch = {epoch}
layers = "{layers}"
"""
FILE_STEPS = """
  [[stages.steps]]
  write = "/etc/motd"
  content = "built in memory\\n"

  [[stages.steps]]
  mkdir = "/opt/app"

  [[stages.steps]]
  write = "config"
  workdir = "/opt/app"
  content = "answer = 42\\n"
  mode = "0600"
  owner = "{owner}"

  [[stages.steps]]
  symlink = "/usr/local/bin/motd"
  target = "/etc/motd"

  [[stages.steps]]
  remove = ["/tmp", "/bin/c*"]
"""


def _build(project: Path, env: dict[str, str], out: str, *extra: str) -> dict[str, str]:
    done = dualbuild(["-v", "build", str(project / "recipe.toml"), "--out", str(project / out), *extra], env)
    assert done.returncode == 0, done.stderr
    # Held all the way: no stage fell back to extracting its base.
    held = "held in memory" in done.stderr and ": extracting it" not in done.stderr
    assert held is not bool(extra), done.stderr
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((project / out).iterdir())
        if path.suffix in (".tar", ".aci")
    }


@pytest.mark.parametrize(
    ("base", "layers", "chain"),
    [
        ("rootfs:busybox.tar", "stages", False),
        ("docker-archive:busybox.docker.tar", "stages", True),
        ("oci-archive:busybox.oci.tar", "steps", False),
        ("docker-archive:busybox.docker.tar", "squash", False),
    ],
)
def test_a_held_build_writes_the_bytes_of_an_extracting_one(
    project: Path,
    busybox_archives: dict[str, Path],
    cli_env: dict[str, str],
    base: str,
    layers: str,
    chain: bool,
) -> None:
    for kind, archive in busybox_archives.items():
        os.link(archive, project / f"busybox.{kind}.tar")
    steps_text = FILE_STEPS.format(owner="0:0")
    if chain:
        stages = f'[[stages]]\nname = "base"\nfrom = "{base}"\n{steps_text}\n'
        stages += '[[stages]]\nname = "final"\nfrom = "stage:base"\n'
        stages += '  [[stages.steps]]\n  write = "/etc/final"\n  content = "on top\\n"\n'
    else:
        stages = f'[[stages]]\nname = "final"\nfrom = "{base}"\n{steps_text}'
    (project / "recipe.toml").write_text(RECIPE.format(stages=stages, user="0", epoch=EPOCH, layers=layers))
    held = _build(project, cli_env, "held")
    extracted = _build(project, cli_env, "extracted", "--extract-base", "--no-cache")
    assert held == extracted
    assert len(held) == 3


def test_a_held_image_runs_in_docker(
    project: Path, busybox_archives: dict[str, Path], cli_env: dict[str, str], docker: Docker
) -> None:
    os.link(busybox_archives["docker"], project / "busybox.docker.tar")
    stages = f'[[stages]]\nfrom = "docker-archive:busybox.docker.tar"\n{FILE_STEPS.format(owner="0:0")}'
    (project / "recipe.toml").write_text(RECIPE.format(stages=stages, user="0", epoch=EPOCH, layers="stages"))
    _build(project, cli_env, "dist")
    docker("load", "-i", str(next((project / "dist").glob("*.docker.tar"))))
    try:
        ran = docker("run", "--rm", "--network", "none", "example.com/held:1.0.0")
        assert ran.stdout.splitlines()[:2] == ["built in memory", "answer = 42"]
        assert "No such file or directory" in ran.stdout  # /bin/cat was removed
        # The base's own layer is kept, the file steps' one added: its config says so too.
        history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "example.com/held:1.0.0")
        assert "dualbuild: stage" in history.stdout
    finally:
        # Other tests count the layers Docker stores: this image's must not stay.
        docker("rmi", "example.com/held:1.0.0", check=False)


def test_a_tarball_of_another_shape_is_extracted(project: Path, cli_env: dict[str, str]) -> None:
    # An entry whose parent the tarball never made: GNU tar makes it up; the build extracts it.
    with tarfile.open(project / "odd.tar", "w") as archive:
        _add(archive, "bin/", tarfile.DIRTYPE)
        with tarfile.open(project / "busybox.tar") as busybox:
            shell = busybox.getmember("bin/busybox")
            archive.addfile(shell, busybox.extractfile(shell))
        _add(archive, "usr/lib/made-up-parents", data=b"x")
    (project / "recipe.toml").write_text(
        '[image]\nname = "example.com/odd"\nversion = "1"\n[[stages]]\nfrom = "rootfs:odd.tar"\n'
        '  [[stages.steps]]\n  write = "/etc/motd"\n  content = "hi"\n[output]\nformats = ["docker"]\n'
    )
    done = dualbuild(["build", str(project / "recipe.toml"), "--no-sign"], cli_env)
    assert done.returncode == 0, done.stderr
    assert "without its parent directory before it: extracting it" in done.stderr


@pytest.mark.slow
def test_a_debian_base_with_python_is_held_as_it_is_extracted(
    tmp_path: Path, cli_env: dict[str, str], docker: Docker
) -> None:
    require_tools("mmdebstrap")
    stages = """[[stages]]
from = { bootstrap = "debian", suite = "bookworm", variant = "minbase", packages = ["python3"] }

  [[stages.steps]]
  write = "/opt/app/main.py"
  content = "import json, sys\\nprint(json.dumps({'python': sys.version_info[0]}))\\n"

  [[stages.steps]]
  remove = ["/usr/share/doc/*", "/usr/share/man"]

  [[stages.steps]]
  symlink = "/usr/local/bin/app"
  target = "/opt/app/main.py"
"""
    recipe = RECIPE.format(stages=stages, user="0", epoch=EPOCH, layers="stages")
    (tmp_path / "recipe.toml").write_text(
        recipe.replace(
            'cmd = ["cat /etc/motd',
            'cmd = ["python3 -v /opt/app/main.py 2>&1 | grep -c stale; python3 /opt/app/main.py #',
        )
    )
    held = _build(tmp_path, cli_env, "held")
    extracted = _build(tmp_path, cli_env, "extracted", "--extract-base", "--no-cache")
    assert held == extracted
    docker("load", "-i", str(next((tmp_path / "held").glob("*.docker.tar"))))
    try:
        ran = docker("run", "--rm", "--network", "none", "example.com/held:1.0.0")
        assert ran.stdout.splitlines() == ["0", '{"python": 3}'], ran.stdout
    finally:
        docker("rmi", "example.com/held:1.0.0", check=False)


COPY_STEPS = """
  [[stages.steps]]
  copy = "app/"
  to = "/opt/app/"

  [[stages.steps]]
  copy = "greeting.txt"
  to = "/etc/greeting"

  [[stages.steps]]
  copy = ["greeting.txt", "app/main.py"]
  to = "/srv/"
  owner = "1000:1000"
  mode = "0640"

  [[stages.steps]]
  copy = "app"
  to = "/etc"

  [[stages.steps]]
  copy = "greeting.txt"
  to = "/etc/passwd"

  [[stages.steps]]
  copy = "app/*.py"
  to = "lib/"
  workdir = "/usr"

  [[stages.steps]]
  copy = "app/data"
  to = "/opt/app"
  owner = "7:8"
"""


def copy_context(project: Path) -> None:
    """A context of what copies meet: modes, setuid, hard links, symlinks, odd times, an ignore file."""
    app = project / "app"
    (app / "bin").mkdir(parents=True)
    (app / "data" / "deep").mkdir(parents=True)
    (app / "main.py").write_text("print('hi')\n")
    (app / "util.py").write_text("X = 1\n")
    (app / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    os.chmod(app / "bin" / "run", 0o4755)
    (app / "data" / "deep" / "blob").write_bytes(random.Random(3).randbytes(2 << 20))
    os.chmod(app / "data", 0o750)
    (app / "a").write_text("linked\n")
    os.link(app / "a", app / "b")
    os.symlink("main.py", app / "link")
    os.symlink("bin/run", app / "tool")
    (app / ".hidden").write_text("dot\n")
    (app / "debug.log").write_text("left out\n")
    (project / ".dockerignore").write_text("app/*.log\n")
    for number, path in enumerate(sorted(app.rglob("*"))):
        # Fractions of a second, rounded as buildah rounds them (.5 up).
        os.utime(
            path,
            ns=(0, (EPOCH - 5000 + number) * 1_000_000_000 + 500_000_000 + number),
            follow_symlinks=False,
        )


@pytest.mark.parametrize("layers", ["steps", "squash"])
def test_a_copy_from_the_context_is_held_as_buildah_copies_it(
    project: Path, cli_env: dict[str, str], layers: str
) -> None:
    copy_context(project)
    stages = f'[[stages]]\nname = "final"\nfrom = "rootfs:busybox.tar"\n{COPY_STEPS}'
    (project / "recipe.toml").write_text(
        RECIPE.format(stages=stages, user="0", epoch=EPOCH + 100, layers=layers)
    )
    held = _build(project, cli_env, "held")
    extracted = _build(project, cli_env, "extracted", "--extract-base", "--no-cache")
    assert held == extracted
