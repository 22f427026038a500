"""Planning a build and looking its steps up in the cache cost no process per step; tree digests."""

from __future__ import annotations

import os
import socket
import tarfile
from pathlib import Path

import pytest

from dualbuild.builder import stages
from dualbuild.builder.cache import tree_digest
from dualbuild.builder.stages import BuildOptions
from dualbuild.pipeline import BuildRequest, build
from tests.unit.conftest import FakeRun

STEPS = 2000


def test_a_long_recipe_is_looked_up_with_one_listing_per_stage(
    fake_run: FakeRun, tmp_path: Path, mounted: Path
) -> None:
    steps = "".join(f'  [[stages.steps]]\n  write = "/etc/f{n}"\n  content = "{n}"\n' for n in range(STEPS))
    with tarfile.open(tmp_path / "base.tar", "w") as base:
        base.addfile(tarfile.TarInfo("etc"))
    (tmp_path / "recipe.toml").write_text(
        '[image]\nname = "example.com/long"\nversion = "1"\n'
        f'[[stages]]\nname = "final"\nfrom = "rootfs:base.tar"\n{steps}'
        '[output]\nformats = ["docker"]\n'
    )
    fake_run.answer("buildah", "images", stdout="[]")
    request = BuildRequest(
        recipe=tmp_path / "recipe.toml", sign=False,
        options=BuildOptions(cache=True, keep=False, extract_base=True),
        environ={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    build(request)
    buildah = fake_run.of("buildah")
    assert [call for call in buildah if "inspect" in call] == []
    assert len([call for call in buildah if "reference=localhost/dualbuild-cache" in call]) == 1
    assert len(buildah) < 20  # nothing per step: the steps write on the mounted tree


class _Everything:
    def __contains__(self, _key: object) -> bool:
        return True


def test_a_cached_tree_pruned_between_the_lookup_and_its_use_is_rebuilt(
    fake_run: FakeRun,
    tmp_path: Path,
    mounted: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tarfile.open(tmp_path / "base.tar", "w") as base:
        base.addfile(tarfile.TarInfo("etc"))
    (tmp_path / "recipe.toml").write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\n[[stages]]\nfrom = "rootfs:base.tar"\n'
        '  [[stages.steps]]\n  write = "/etc/motd"\n  content = "hi"\n[output]\nformats = ["docker"]\n'
    )
    # The listing said the tree is there; by the time it is used, a prune removed it.
    monkeypatch.setattr(stages, "cached_keys", lambda _buildah: _Everything())

    def from_image(argv: list[str]) -> tuple[int, str, str]:
        if argv[-1].startswith("localhost/dualbuild-cache:"):
            return 125, "", f"Error: {argv[-1]}: image not known"
        return 0, "", ""

    fake_run.answer("buildah", "from", behaviour=from_image)
    request = BuildRequest(
        recipe=tmp_path / "recipe.toml", sign=False, options=BuildOptions(keep=False, extract_base=True),
        environ={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    report = build(request)
    assert report.step_timings[0].cached is False  # run again, not taken from the cache
    assert (mounted / "etc" / "motd").read_text() == "hi"
    assert any("was removed meanwhile" in record.getMessage() for record in caplog.records)


def test_a_tree_digest_sees_what_a_layer_keeps_and_only_that(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hi")
    (root / "link").symlink_to("etc/motd")
    os.utime(root / "etc" / "motd", ns=(0, 1_700_000_000_400_000_000))
    digest = tree_digest(root)
    # What a commit does not keep: sub-second mtimes, sockets.
    os.utime(root / "etc" / "motd", ns=(0, 1_700_000_000_900_000_000))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.fspath(root / "etc" / "sock"))
    listener.close()
    assert tree_digest(root) == digest
    changes = [
        lambda: (root / "etc" / "motd").chmod(0o600),
        lambda: (root / "etc" / "motd").write_text("hI"),  # same size, new mtime
        lambda: (root / "link").unlink(),
        lambda: (root / "etc" / "new").touch(),
    ]
    for change in changes:
        change()
        assert tree_digest(root) != digest
        digest = tree_digest(root)
