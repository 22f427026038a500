"""Which builds are held in memory, and which tarball shapes are read there or left to extraction."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from dualbuild.builder.basetree import NotHeld, archive_image, rootfs_tree
from dualbuild.builder.held import why_extracted
from dualbuild.builder.stages import BuildOptions
from dualbuild.errors import BuildError
from dualbuild.layer.archivefiles import ArchiveFiles
from dualbuild.layer.tree import EntryType
from dualbuild.plan import make_plan
from dualbuild.recipe import load_recipe
from dualbuild.settings import Overrides, resolve


def tarball(path: Path, *members: tuple[str, bytes, bytes | str], compress: bool = False) -> Path:
    """A tar of (name, type, data or link target) members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
                continue
            if isinstance(payload, str):
                info.linkname = payload
            archive.addfile(info)
    path.write_bytes(gzip.compress(out.getvalue(), mtime=0) if compress else out.getvalue())
    return path


DIR, FILE, LINK, SYMLINK = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE


@pytest.fixture
def files() -> ArchiveFiles:
    return ArchiveFiles()


def test_a_compressed_rootfs_is_read_from_its_decompressed_copy(tmp_path: Path, files: ArchiveFiles) -> None:
    path = tarball(tmp_path / "base.tar.gz", ("etc", DIR, b""), ("etc/motd", FILE, b"hello\n"), compress=True)
    tree = rootfs_tree(path, tmp_path, files)
    node = tree.node("etc/motd")
    assert node is not None
    assert tree.content(node) == b"hello\n"
    assert files.paths[0].parent == tmp_path
    assert files.paths[0] != path
    files.close()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ((("etc/motd", FILE, b"x"),), "without its parent directory before it"),
        ((("etc", DIR, b""), ("etc/a", FILE, b"1"), ("etc/a", FILE, b"2")), "names /etc/a twice"),
        ((("etc", DIR, b""), ("etc/b", LINK, "etc/a")), "not a file before it"),
        ((("etc/", FILE, b""),), "named as a directory"),
    ],
)
def test_shapes_whose_extraction_is_not_certain_are_left_to_it(
    tmp_path: Path, files: ArchiveFiles, members: tuple[tuple[str, bytes, bytes | str], ...], reason: str
) -> None:
    with pytest.raises(NotHeld, match=reason):
        rootfs_tree(tarball(tmp_path / "base.tar", *members), tmp_path, files)


def test_unsafe_entries_are_refused_as_extracting_refuses_them(tmp_path: Path, files: ArchiveFiles) -> None:
    with pytest.raises(BuildError, match=r"has a '\.\.' component; refusing to extract"):
        rootfs_tree(
            tarball(tmp_path / "a.tar", ("etc", DIR, b""), ("etc/../../x", FILE, b"")), tmp_path, files
        )
    with pytest.raises(BuildError, match="through the symlink 'up'"):
        rootfs_tree(tarball(tmp_path / "b.tar", ("up", SYMLINK, "/"), ("up/etc", DIR, b"")), tmp_path, files)


def docker_archive(path: Path, *layers: Path, config: dict[str, object]) -> Path:
    """A docker-archive of these layer tars and this config (manifest.json names them)."""
    with tarfile.open(path, "w") as archive:
        names = []
        for number, layer in enumerate(layers):
            names.append(f"{number}/layer.tar")
            archive.add(layer, names[-1])
        for name, data in (
            ("config.json", config),
            ("manifest.json", [{"Config": "config.json", "Layers": names}]),
        ):
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


def test_image_layers_apply_whiteouts_as_a_store_does(tmp_path: Path, files: ArchiveFiles) -> None:
    lower = tarball(
        tmp_path / "1.tar",
        ("etc", DIR, b""), ("etc/a", FILE, b"a"), ("etc/b", FILE, b"b"),
        ("opt", DIR, b""), ("opt/old", FILE, b"old"), ("opt/sub", DIR, b""), ("opt/sub/deep", FILE, b"d"),
    )  # fmt: skip
    upper = tarball(
        tmp_path / "2.tar",
        ("etc", DIR, b""), ("etc/.wh.a", FILE, b""),
        ("opt", DIR, b""), ("opt/.wh..wh..opq", FILE, b""), ("opt/new", FILE, b"new"),
        compress=True,
    )  # fmt: skip
    config = {"config": {"Env": ["A=1"]}}
    archive = docker_archive(tmp_path / "image.tar", lower, upper, config=config)
    tree, read = archive_image(archive, "docker-archive", tmp_path, files)
    assert read == config
    assert [entry.path for entry in tree.tree(0).entries] == ["etc", "etc/b", "opt", "opt/new"]
    node = tree.node("etc/b")
    assert node is not None
    assert tree.content(node) == b"b"  # read where it lies, inside the archive
    # An opaque directory hides what the layers below put at any depth in it.
    deep = tarball(
        tmp_path / "4.tar", ("opt", DIR, b""), ("opt/sub", DIR, b""), ("opt/.wh..wh..opq", FILE, b"")
    )
    deep_archive = docker_archive(tmp_path / "deep.tar", lower, deep, config=config)
    tree, _ = archive_image(deep_archive, "docker-archive", tmp_path, files)
    assert [entry.path for entry in tree.tree(0).entries] == ["etc", "etc/a", "etc/b", "opt", "opt/sub"]
    for number, (bad, reason) in enumerate(
        [
            (tarball(tmp_path / "5.tar", (".wh.", FILE, b"")), "of no entry"),
            (tarball(tmp_path / "6.tar", ("/etc", DIR, b"")), "an absolute path"),
        ]
    ):
        refused = docker_archive(tmp_path / f"refused-{number}.tar", lower, bad, config=config)
        with pytest.raises(NotHeld, match=reason):
            archive_image(refused, "docker-archive", tmp_path, files)
    orphan = tarball(tmp_path / "3.tar", ("etc/c", FILE, b""))
    with pytest.raises(NotHeld, match="without its parent directory"):
        archive_image(
            docker_archive(tmp_path / "bad.tar", lower, orphan, config=config),
            "docker-archive",
            tmp_path,
            files,
        )
    files.close()


def test_hard_links_share_one_node_until_a_name_goes(tmp_path: Path, files: ArchiveFiles) -> None:
    path = tarball(tmp_path / "base.tar", ("bin", DIR, b""), ("bin/a", FILE, b"x"), ("bin/b", LINK, "bin/a"))
    tree = rootfs_tree(path, tmp_path, files)
    kinds = [(entry.path, entry.type, entry.link_target) for entry in tree.tree(0).entries]
    assert kinds == [
        ("bin", EntryType.DIR, ""),
        ("bin/a", EntryType.FILE, ""),
        ("bin/b", EntryType.HARDLINK, "bin/a"),
    ]
    below = tree.snapshot()
    tree.remove("bin/a")
    assert [(entry.path, entry.type) for entry in tree.tree(0).entries][1:] == [("bin/b", EntryType.FILE)]
    # The snapshot still has both names of the one inode.
    assert [entry.type for entry in below.tree(0).entries][1:] == [EntryType.FILE, EntryType.HARDLINK]


RECIPE = """\
[image]
name = "example.com/t"
version = "1"
[[stages]]
name = "base"
from = "{base}"
  [[stages.steps]]
  {step}
[[stages]]
from = "stage:base"
  [[stages.steps]]
  write = "/etc/motd"
  content = "hi"
[output]
formats = ["docker", "aci"]
aci_layers = "{aci_layers}"
"""


@pytest.mark.parametrize(
    ("base", "step", "aci_layers", "extract", "why"),
    [
        ("rootfs:b.tar", 'remove = ["/tmp"]', "squash", False, None),
        ("scratch", 'mkdir = "/etc"', "squash", False, None),
        ("rootfs:b.tar", 'run = "true"', "squash", False, "stage base step 1 is run"),
        ("rootfs:b.tar", 'copy = ["b.tar"]\n  to = "/"', "squash", False, None),
        ("docker.io/library/debian:12", 'mkdir = "/x"', "squash", False, "starts from docker.io"),
        ("rootfs:b.tar", 'mkdir = "/x"', "dependencies", False, "ACI dependency chain"),
        ("rootfs:b.tar", 'mkdir = "/x"', "squash", True, "--extract-base"),
    ],
)
def test_what_is_built_in_memory(
    tmp_path: Path, base: str, step: str, aci_layers: str, extract: bool, why: str | None
) -> None:
    (tmp_path / "b.tar").write_bytes(b"")
    (tmp_path / "recipe.toml").write_text(RECIPE.format(base=base, step=step, aci_layers=aci_layers))
    recipe = load_recipe(tmp_path / "recipe.toml", {})
    plan = make_plan(recipe, resolve(recipe, Overrides(), {"XDG_CACHE_HOME": str(tmp_path)}))
    found = why_extracted(plan, BuildOptions(extract_base=extract))
    assert (found is None) if why is None else (found is not None and why in found)


def test_a_copy_from_another_stage_needs_containers(tmp_path: Path) -> None:
    (tmp_path / "recipe.toml").write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\n'
        '[[stages]]\nname = "one"\nfrom = "scratch"\n  [[stages.steps]]\n  mkdir = "/x"\n'
        '[[stages]]\nname = "two"\nfrom = "scratch"\n'
        '  [[stages.steps]]\n  copy = "/x"\n  from = "one"\n  to = "/"\n'
        '[output]\nformats = ["docker"]\n'
    )
    recipe = load_recipe(tmp_path / "recipe.toml", {})
    plan = make_plan(recipe, resolve(recipe, Overrides(), {"XDG_CACHE_HOME": str(tmp_path)}))
    found = why_extracted(plan, BuildOptions())
    assert found is not None
    assert "stage two step 1 is copy /x" in found


def test_special_files_carry_no_xattrs_the_kernel_refuses_them(tmp_path: Path, files: ArchiveFiles) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind in (("fifo", tarfile.FIFOTYPE), ("file", tarfile.REGTYPE), ("dir", tarfile.DIRTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.pax_headers = {"SCHILY.xattr.user.x": "1", "SCHILY.xattr.security.capability": "c"}
            archive.addfile(info)
    (tmp_path / "base.tar").write_bytes(out.getvalue())
    tree = rootfs_tree(tmp_path / "base.tar", tmp_path, files)
    xattrs = {entry.path: dict(entry.xattrs) for entry in tree.tree(0).entries}
    assert xattrs == {
        "dir": {"user.x": b"1"},
        "fifo": {},
        "file": {"security.capability": b"c", "user.x": b"1"},
    }


def test_threads_read_their_own_descriptors(tmp_path: Path) -> None:
    # More files than are kept open: one thread closing a descriptor must not hit the other.
    files = ArchiveFiles()
    for number in range(600):
        (tmp_path / str(number)).write_bytes(str(number).encode() * 10)
        files.add(tmp_path / str(number))
    wrong: list[int] = []

    def read_all() -> None:
        for _ in range(5):
            for number in range(600):
                if files.read(number, 0, 100) != str(number).encode() * 10:
                    wrong.append(number)

    threads = [threading.Thread(target=read_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files.close()
    assert wrong == []
