"""Staged builds with real buildah: every base kind, every step kind, failures, cleanup."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from dualbuild.builder.cache import base_key
from dualbuild.errors import BuildError
from dualbuild.files import file_sha256
from tests.integration.helpers import Builder, push_to_registry, write_recipe
from tests.support import require_tools

MULTI_STAGE = """
[args]
MSG = "hello"
DEST = "/out"

[[stages]]
name = "build"
from = "rootfs:busybox.tar"
env = { STAGE_VAR = "stage-${MSG}" }

  [[stages.steps]]
  run = '''mkdir -p ${DEST} && chmod 777 ${DEST} && echo ${MSG} > ${DEST}/msg \\
    && echo $STAGE_VAR $STEP_VAR > ${DEST}/env'''
  env = { STEP_VAR = "step" }

  [[stages.steps]]
  run = ["sh", "-c", "echo argv-${MSG} > ${DEST}/argv; id -u > ${DEST}/uid"]
  user = "65534"
  network = "none"

  [[stages.steps]]
  run = "ip link | grep -c '^[0-9]' > /net-none-links"
  network = "none"

[[stages]]
name = "final"
from = "stage:build"
workdir = "/srv"

  [[stages.steps]]
  copy = ["payload/", "single.txt"]
  to = "/srv/app/"
  owner = "1000:1001"

  [[stages.steps]]
  copy = ["${DEST}/msg", "${DEST}/argv"]
  from = "build"
  to = "copied/"
  mode = "0600"

  [[stages.steps]]
  write = "/etc/motd"
  content = "${MSG} from dualbuild\\n"
  mode = "0640"
  owner = "0:1001"

  [[stages.steps]]
  mkdir = "/data/deep/dir"
  mode = "0700"
  owner = "1000:1000"

  [[stages.steps]]
  symlink = "/usr/local/bin/app"
  target = "/srv/app/single.txt"

  [[stages.steps]]
  remove = ["/out/uid", "/bin/vi"]

  [[stages.steps]]
  run = "pwd > /srv/pwd; ls /srv/app > /srv/listing"

[app]
cmd = ["/bin/sh"]
"""


def test_multi_stage_recipe_with_every_step_kind(builder: Builder, context: Path) -> None:
    (context / "payload" / "sub").mkdir(parents=True)
    (context / "payload" / "a.txt").write_text("a\n")
    (context / "payload" / "sub" / "b.txt").write_text("b\n")
    (context / "payload" / "link").symlink_to("a.txt")
    (context / "single.txt").write_text("single\n")
    recipe = write_recipe(context, MULTI_STAGE)
    with builder.build(recipe) as built:
        root = built.rootfs

        def content(path: str) -> str:
            return (root / path.lstrip("/")).read_text()

        def owner_mode(path: str) -> tuple[int, int, str]:
            info = os.lstat(root / path.lstrip("/"))
            return info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode))

        assert content("/out/msg") == "hello\n"
        assert content("/out/env") == "stage-hello step\n"
        assert content("/out/argv") == "argv-hello\n"
        assert content("/net-none-links") == "1\n"  # only lo
        assert not (root / "out" / "uid").exists()
        assert not (root / "bin" / "vi").exists()
        # Docker COPY: a directory's contents go into the destination.
        assert content("/srv/app/a.txt") == "a\n"
        assert content("/srv/app/sub/b.txt") == "b\n"
        assert content("/srv/app/single.txt") == "single\n"
        assert os.readlink(root / "srv/app/link") == "a.txt"
        assert owner_mode("/srv/app/a.txt")[:2] == (1000, 1001)
        assert owner_mode("/srv/app/sub")[:2] == (1000, 1001)
        # Relative destination resolves against the stage workdir; mode applied.
        assert content("/srv/copied/msg") == "hello\n"
        assert owner_mode("/srv/copied/argv") == (0, 0, "0o600")
        assert content("/etc/motd") == "hello from dualbuild\n"
        assert owner_mode("/etc/motd") == (0, 1001, "0o640")
        assert owner_mode("/data/deep/dir") == (1000, 1000, "0o700")
        assert owner_mode("/data/deep")[:2] == (0, 0)
        assert os.readlink(root / "usr/local/bin/app") == "/srv/app/single.txt"
        assert content("/srv/pwd") == "/srv\n"
        assert content("/srv/listing").split() == ["a.txt", "link", "single.txt", "sub"]
        # buildah run's bind-mount placeholders do not end up in the image.
        assert not (root / "etc" / "hostname").exists()
        assert not (root / "etc" / "resolv.conf").exists()
        assert built.config.cmd == ("/bin/sh",)
        assert builder.containers()
    assert not builder.containers()


def test_mount_stubs_go_and_files_a_step_made_stay(builder: Builder, context: Path) -> None:
    # With no network, buildah mounts no hosts or resolv.conf: what the step makes there is its own.
    recipe = write_recipe(
        context,
        '[[stages]]\nfrom = "rootfs:busybox.tar"\n'
        '  [[stages.steps]]\n  run = "touch /etc/resolv.conf /etc/hosts"\n  network = "none"\n'
        '  [[stages.steps]]\n  run = "true"\n'
        '  [[stages.steps]]\n  run = "true"\n  network = "host"\n',
    )
    with builder.build(recipe) as built:
        root = built.rootfs
        for name in ("resolv.conf", "hosts"):
            info = os.lstat(root / "etc" / name)
            assert (info.st_size, stat.S_IMODE(info.st_mode)) == (0, 0o644)
        # The runtime's own mount targets (hostname in every step; /run, which busybox.tar
        # lacks, for /run/.containerenv) do not reach the image; the base's /dev stays.
        assert not os.path.lexists(root / "etc" / "hostname")
        assert not os.path.lexists(root / "run")
        assert (root / "dev").is_dir()


def test_docker_archive_base_config_is_inherited_and_app_overrides(
    builder: Builder, context: Path, busybox_archives: dict[str, Path]
) -> None:
    shutil.copy(busybox_archives["docker"], context / "base.tar")
    recipe = write_recipe(
        context,
        '[[stages]]\nfrom = "docker-archive:base.tar"\n'
        '  [[stages.steps]]\n  run = "echo $BASE_VAR > /base"\n\n'
        '[app]\nentrypoint = ["/bin/echo"]\nenv = { EXTRA = "1" }\n',
    )
    with builder.build(recipe) as built:
        assert (built.rootfs / "base").read_text() == "from-base\n"
        config = built.config
        assert config.entrypoint == ("/bin/echo",)
        assert config.cmd is None  # a new entrypoint resets the inherited cmd, as in Docker
        assert dict(config.env)["BASE_VAR"] == "from-base"
        assert dict(config.env)["EXTRA"] == "1"
        assert config.workdir == "/root"
        assert config.labels["base.label"] == "yes"
        assert [p.port for p in config.ports] == [8080]


def test_oci_archive_base_republished_unchanged(
    builder: Builder, context: Path, busybox_archives: dict[str, Path]
) -> None:
    shutil.copy(busybox_archives["oci"], context / "base.oci.tar")
    recipe = write_recipe(context, '[[stages]]\nfrom = "oci-archive:base.oci.tar"\n')
    with builder.build(recipe) as built:
        assert (built.rootfs / "bin" / "busybox").is_file()
        assert built.config.cmd == ("/bin/sh",)


def test_registry_base_with_tls_verify_off(
    builder: Builder, context: Path, busybox_archives: dict[str, Path], registry: str
) -> None:
    push_to_registry(busybox_archives["docker"], f"{registry}/test/busybox:1.0")
    recipe = write_recipe(
        context,
        f'[[stages]]\nfrom = "{registry}/test/busybox:1.0"\ntls_verify = false\n'
        '  [[stages.steps]]\n  run = "echo pulled > /pulled"\n',
    )
    with builder.build(recipe) as built:
        assert (built.rootfs / "pulled").read_text() == "pulled\n"
        assert dict(built.config.env)["BASE_VAR"] == "from-base"


def test_registry_base_with_tls_refused_clearly(builder: Builder, context: Path, registry: str) -> None:
    recipe = write_recipe(context, f'[[stages]]\nfrom = "{registry}/test/missing:1.0"\n')
    with pytest.raises(BuildError, match="cannot use base"), builder.build(recipe):
        pass
    assert not builder.containers()


def _make_aci(path: Path, rootfs_tar: Path, manifest: dict[str, object]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as out, tarfile.open(rootfs_tar) as rootfs:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
        root = tarfile.TarInfo("rootfs")
        root.type = tarfile.DIRTYPE
        out.addfile(root)
        for member in rootfs:
            member.name = "rootfs/" + member.name
            out.addfile(member, rootfs.extractfile(member) if member.isfile() else None)
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))


ACI_MANIFEST: dict[str, object] = {
    "acKind": "ImageManifest",
    "acVersion": "0.8.11",
    "name": "example.com/aci-base",
    "app": {
        "exec": ["/bin/sh", "-c", "echo hi"],
        "user": "0",
        "group": "0",
        "workingDirectory": "/tmp",
        "environment": [{"name": "FROM_ACI", "value": "yes"}],
        "ports": [{"name": "http", "protocol": "tcp", "port": 80}],
        "mountPoints": [{"name": "data", "path": "/data", "readOnly": False}],
        "userLabels": {"from": "aci"},
    },
}


def test_aci_base_gives_rootfs_and_app(builder: Builder, context: Path, busybox_rootfs: Path) -> None:
    _make_aci(context / "base.aci", busybox_rootfs, ACI_MANIFEST)
    recipe = write_recipe(
        context, '[[stages]]\nfrom = "aci:base.aci"\n  [[stages.steps]]\n  run = "echo $FROM_ACI"\n'
    )
    with builder.build(recipe) as built:
        assert (built.rootfs / "bin" / "busybox").is_file()
        config = built.config
        assert config.entrypoint == ("/bin/sh", "-c", "echo hi")
        assert config.workdir == "/tmp"
        assert dict(config.env) == {"FROM_ACI": "yes"}
        assert [(p.name, p.port) for p in config.ports] == [("http", 80)]
        assert [(v.name, v.path) for v in config.volumes] == [("data", "/data")]
        assert config.labels == {"from": "aci"}


def test_aci_with_dependencies_is_refused(builder: Builder, context: Path, busybox_rootfs: Path) -> None:
    manifest = {**ACI_MANIFEST, "dependencies": [{"imageName": "example.com/other"}]}
    _make_aci(context / "dep.aci", busybox_rootfs, manifest)
    recipe = write_recipe(context, '[[stages]]\nfrom = "aci:dep.aci"\n')
    with pytest.raises(BuildError, match="has dependencies"), builder.build(recipe):
        pass
    assert not builder.containers()


def test_debian_bootstrap_base_is_cached(builder: Builder, context: Path) -> None:
    require_tools("mmdebstrap")
    recipe = write_recipe(
        context,
        '[[stages]]\nfrom = { bootstrap = "debian", suite = "bookworm", variant = "extract", '
        'packages = ["busybox-static"] }\n',
    )
    with builder.build(recipe) as built:
        assert (built.rootfs / "bin" / "busybox").is_file()
    cached = list((builder.cache_dir / "bootstrap").glob("bookworm-extract-*.tar"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    with builder.build(recipe) as built:
        assert (built.rootfs / "bin" / "busybox").is_file()
    assert cached[0].stat().st_mtime_ns == stamp  # not bootstrapped again


def test_failing_step_names_stage_step_command_and_output(builder: Builder, context: Path) -> None:
    recipe = write_recipe(
        context,
        '[[stages]]\nname = "only"\nfrom = "rootfs:busybox.tar"\n'
        '  [[stages.steps]]\n  mkdir = "/ok"\n'
        '  [[stages.steps]]\n  run = "for i in $(seq 1 30); do echo line$i; done; exit 7"\n',
    )
    with pytest.raises(BuildError) as caught, builder.build(recipe):
        pass
    message = str(caught.value)
    assert "[1/1 only] step 2/2" in message
    assert "exit code 7" in message
    assert "/bin/sh -c 'for i in" in message
    assert "line30" in message
    assert "line5\n" not in message  # only the tail
    assert caught.value.exit_code == 1
    assert not builder.containers()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[stages]]\nfrom = "rootfs:missing.tar"\n', "rootfs tarball 'missing.tar' not found"),
        ('[[stages]]\nfrom = "docker-archive:missing.tar"\n', "docker-archive 'missing.tar' not found"),
        (
            '[[stages]]\nfrom = "rootfs:busybox.tar"\n  [[stages.steps]]\n  copy = "nope.txt"\n  to = "/"\n',
            "'nope.txt' not found in the build context",
        ),
        (
            '[[stages]]\nfrom = "rootfs:busybox.tar"\n  [[stages.steps]]\n  remove = "/not/there"\n',
            "remove /not/there: no such file or directory",
        ),
        (
            '[[stages]]\nfrom = "rootfs:busybox.tar"\n  [[stages.steps]]\n  copy = "escape"\n  to = "/x/"\n',
            "pointing outside the build context",
        ),
    ],
)
def test_bad_inputs_are_clear_errors(builder: Builder, context: Path, body: str, message: str) -> None:
    (context / "escape").mkdir()
    (context / "escape" / "passwd").symlink_to("/etc/passwd")
    recipe = write_recipe(context, body)
    with (
        pytest.raises(BuildError, match=message.replace("(", r"\(").replace(")", r"\)")),
        builder.build(recipe),
    ):
        pass
    assert not builder.containers()


def test_rootfs_tarball_escaping_entries_are_refused(builder: Builder, context: Path) -> None:
    victim = context / "victim"
    victim.mkdir()
    planted = tarfile.TarInfo("evil")
    planted.type = tarfile.SYMTYPE
    planted.linkname = str(victim)  # then "evil/passwd" would land in it, outside the container
    for members in (["../evil"], ["/abs/evil"], [planted, "evil/passwd"]):
        tar_path = context / "evil.tar"
        with tarfile.open(tar_path, "w") as out:
            for member in members:
                if isinstance(member, tarfile.TarInfo):
                    out.addfile(member)
                    continue
                info = tarfile.TarInfo(member)
                info.size = 4
                out.addfile(info, io.BytesIO(b"evil"))
        recipe = write_recipe(context, '[[stages]]\nfrom = "rootfs:evil.tar"\n')
        with pytest.raises(BuildError, match="refusing to extract"), builder.build(recipe):
            pass
    assert not (context.parent / "evil").exists()
    assert not Path("/abs/evil").exists()
    assert not list(victim.iterdir())
    assert not builder.containers()


@pytest.mark.parametrize("layers", ["squash", "stages"])
def test_rootfs_base_is_extracted_again_not_cached(builder: Builder, context: Path, layers: str) -> None:
    # The first stage is its base alone: position 0, which the cache keeps only as a layer's tree.
    # A tarball of its own (one more file), so that no other test's build cached its tree.
    with tarfile.open(context / "busybox.tar", "a") as tarball:
        marker = tarfile.TarInfo(f"layers-{layers}")
        tarball.addfile(marker, io.BytesIO(b""))
    recipe = write_recipe(
        context,
        '[[stages]]\nname = "base"\nfrom = "rootfs:busybox.tar"\n\n'
        '[[stages]]\nname = "final"\nfrom = "stage:base"\n'
        '  [[stages.steps]]\n  write = "/marker"\n  content = "marked\\n"\n'
        f'\n[output]\nlayers = "{layers}"\n',
    )
    for _ in range(2):  # filling the cache, then hitting it
        with builder.build(recipe) as built:
            assert (built.rootfs / "marker").read_text() == "marked\n"
            assert (built.rootfs / "bin" / "busybox").is_file()
    rootfs_key = base_key("rootfs", file_sha256(context / "busybox.tar"))
    assert builder.cached(rootfs_key) is (layers != "squash")
    assert builder.cached(builder.final_key(recipe))
    assert not builder.containers()


def test_a_cached_tree_damaged_in_the_store_is_built_again(
    builder: Builder, context: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = write_recipe(
        context,
        '[[stages]]\nfrom = "rootfs:busybox.tar"\n'
        '  [[stages.steps]]\n  run = "echo cached > /marker; echo kept > /other"\n',
    )
    with builder.build(recipe):
        pass
    key = builder.final_key(recipe)
    assert builder.cached(key)
    # The step's layer in buildah's store loses a file (a disk error, a hand in the store).
    assert builder.storage.root is not None
    damaged = list(builder.storage.root.glob("overlay/*/diff/marker"))
    assert damaged
    for path in damaged:
        path.unlink()
    with builder.build(recipe) as built:
        assert (built.rootfs / "marker").read_text() == "cached\n"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"the cached tree {key[:12]} differs from what was committed" in w for w in warnings), warnings
    # Built again and committed again: the next build trusts it.
    caplog.clear()
    with builder.build(recipe) as built:
        assert (built.rootfs / "marker").read_text() == "cached\n"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert not builder.containers()


def test_isolation_override_is_used(builder: Builder, context: Path) -> None:
    recipe = write_recipe(
        context, '[[stages]]\nfrom = "rootfs:busybox.tar"\n  [[stages.steps]]\n  run = "echo chrooted"\n'
    )
    with builder.build(recipe, isolation="chroot") as built:
        assert built.rootfs.is_dir()
    assert "chrooted" in builder.output


def test_no_leftover_containers_in_default_storage() -> None:
    require_tools("buildah")
    names = subprocess.run(
        ["buildah", "containers", "--format", "{{.ContainerName}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [name for name in names if name.startswith("dualbuild-")]
