"""Build secrets end to end: read by their step, and nowhere after it (issue 20, recipe format v1.1)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets as random_source
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dualbuild.builder.storage import StorageOptions
from tests.integration.helpers import buildah, dualbuild
from tests.support import require_tools

RECIPE = """\
[image]
name = "example.com/secrets/app"
version = "1.0.0"

[[stages]]
from = "rootfs:busybox.tar"
  [[stages.steps]]
  run = "@RUN@"
  env = { BUILD_ID = "@BUILD_ID@" }
  secrets = [
    { id = "npmrc", src = "secrets/npmrc" },
    { id = "token", env = "API_TOKEN", target = "/root/.token" },
  ]
  [[stages.steps]]
  copy = ["."]
  to = "/ctx/"

[app]
entrypoint = ["/bin/sh"]

[output]
formats = ["docker", "aci", "oci"]
source_date_epoch = 1700000000
""".replace(
    "@RUN@",
    "sha256sum /run/secrets/npmrc /root/.token > /proof"
    " && stat -c '%a %u %F %n' /run/secrets/npmrc /root/.token > /modes",
)
SECRETS_LINE = next(
    n for n, line in enumerate(RECIPE.splitlines(), 1) if line.lstrip().startswith("secrets =")
)
SECRETS_KEY = "stages[0].steps[0].secrets"
STEP_HEADER = "[1/1 stage1] step 1/2 run"
GZIP_MAGIC = b"\x1f\x8b"


def _marker(kind: str) -> bytes:
    return f"dualbuild-secret-{kind}-{random_source.token_hex(16)}".encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Workspace:
    """A project with the recipe, its secret file, and the environment of a signed CLI build."""

    project: Path
    env: dict[str, str]
    cache: Path
    # The step cache is the buildah store's, shared by every test: each workspace's step is its own.
    build_id: str = field(default_factory=random_source.token_hex)

    @property
    def recipe(self) -> Path:
        return self.project / "recipe.toml"

    def write_recipe(self, text: str = RECIPE) -> None:
        self.recipe.write_text(text.replace("@BUILD_ID@", self.build_id))

    def build(
        self, *args: str, out: str = "dist", verbosity: tuple[str, ...] = ()
    ) -> tuple[Path, str, dict[str, Any]]:
        """``dualbuild [-v..] build RECIPE --out OUT ARGS --json``: the output folder, stderr, report."""
        result = dualbuild(
            [*verbosity, "build", str(self.recipe), "--out", str(self.project / out), "--json", *args],
            self.env,
        )
        assert result.returncode == 0, result.stderr
        return self.project / out, result.stderr, json.loads(result.stdout)


def _workspace(
    directory: Path, busybox_rootfs: Path, storage: StorageOptions, signing_home: tuple[Path, str]
) -> Workspace:
    project = directory / "project"
    (project / "secrets").mkdir(parents=True)
    shutil.copy(busybox_rootfs, project / "busybox.tar")
    conf = directory / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{storage.root}"\nrunroot = "{storage.runroot}"\n'
    )
    home, fingerprint = signing_home
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(conf),
        "GNUPGHOME": str(home),
        "DUALBUILD_SIGN_KEY": fingerprint,
        "XDG_CACHE_HOME": str(directory / "cache"),
    }
    env.pop("API_TOKEN", None)
    env.pop("OTHER_TOKEN", None)
    workspace = Workspace(project=project, env=env, cache=directory / "cache" / "dualbuild")
    workspace.write_recipe()
    return workspace


@pytest.fixture
def workspace(
    tmp_path: Path, busybox_rootfs: Path, buildah_storage: StorageOptions, signing_home: tuple[Path, str]
) -> Workspace:
    return _workspace(tmp_path, busybox_rootfs, buildah_storage, signing_home)


@dataclass
class MainBuild:
    """One build of RECIPE at -vv with random markers as its secrets, shared by the tests below."""

    workspace: Workspace
    file_secret: bytes
    env_secret: bytes
    out: Path
    stderr: str
    report: dict[str, Any]

    def artifact(self, suffix: str) -> Path:
        (found,) = [path for path in self.out.iterdir() if path.name.endswith(suffix)]
        return found


@pytest.fixture(scope="module")
def main_build(
    tmp_path_factory: pytest.TempPathFactory,
    busybox_rootfs: Path,
    buildah_storage: StorageOptions,
    signing_home: tuple[Path, str],
) -> MainBuild:
    require_tools("actool")
    workspace = _workspace(tmp_path_factory.mktemp("secrets"), busybox_rootfs, buildah_storage, signing_home)
    file_secret, env_secret = _marker("file"), _marker("env")
    (workspace.project / "secrets" / "npmrc").write_bytes(file_secret)
    workspace.env["API_TOKEN"] = env_secret.decode()
    out, stderr, report = workspace.build(verbosity=("-vv",))
    return MainBuild(workspace, file_secret, env_secret, out, stderr, report)


# --- reading an image's trees --------------------------------------------------------------------


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data.startswith(GZIP_MAGIC) else data


def _tar_blobs(archive: Path) -> dict[str, bytes]:
    """Every regular member of a tar archive, decompressed when gzipped."""
    with tarfile.open(archive) as tar:
        return {
            member.name: _maybe_gunzip(tar.extractfile(member).read())  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def _docker_layers(archive: Path) -> list[dict[str, tuple[tarfile.TarInfo, bytes]]]:
    """The docker tarball's layers, in order: each a map of normal path -> (member, bytes)."""
    blobs = _tar_blobs(archive)
    (manifest,) = json.loads(blobs["manifest.json"])
    return [_tree(blobs[layer]) for layer in manifest["Layers"]]


def _tree(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    tree = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            tree[member.name.removeprefix("./").strip("/")] = (member, content)
    return tree


def _aci_tree(aci: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    tree = _tree(_maybe_gunzip(aci.read_bytes()))
    return {name.removeprefix("rootfs/"): entry for name, entry in tree.items() if name.startswith("rootfs/")}


def _files_under(top: Path) -> Iterator[tuple[Path, bytes]]:
    """Every regular file below ``top`` that can be read, symlinks not followed."""
    for folder, _, names in os.walk(top):
        for name in names:
            path = Path(folder) / name
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                yield path, path.read_bytes()
            except OSError:
                continue


def _holding(markers: tuple[bytes, ...], files: Iterator[tuple[Path, bytes]]) -> list[str]:
    return [f"{path}: {marker.decode()}" for path, data in files for marker in markers if marker in data]


# --- 1. the step reads its secrets, the image keeps none of their mounts ----------------------------


def test_the_step_reads_both_secrets_as_read_only_files_at_their_paths(main_build: MainBuild) -> None:
    layers = _docker_layers(main_build.artifact(".docker.tar"))
    merged = {name: entry for layer in layers for name, entry in layer.items()}
    proof = merged["proof"][1].decode()
    assert proof == (
        f"{_sha256(main_build.file_secret)}  /run/secrets/npmrc\n"
        f"{_sha256(main_build.env_secret)}  /root/.token\n"
    )
    assert merged["modes"][1].decode() == (
        "400 0 regular file /run/secrets/npmrc\n400 0 regular file /root/.token\n"
    )
    assert f"{STEP_HEADER} " in main_build.stderr


def test_no_mount_target_is_left_in_any_layer_or_the_aci(main_build: MainBuild) -> None:
    layers = _docker_layers(main_build.artifact(".docker.tar"))
    aci = _aci_tree(main_build.artifact(".aci"))
    assert "proof" in aci  # the trees are the built ones
    for tree in [*layers, aci]:
        names = set(tree)
        assert not {name for name in names if name == "run" or name.startswith("run/")}
        assert "root/.token" not in names
        assert not {name for name in names if "secrets/npmrc" in name or name.endswith(".wh.npmrc")}
        assert not {name for name in names if name.endswith((".wh..token", ".wh.run"))}
    # The step's own layer holds what it wrote and nothing else empty beside it.
    step_layer = next(layer for layer in layers if "proof" in layer)
    empty_files = [name for name, (member, _) in step_layer.items() if member.isfile() and member.size == 0]
    assert not empty_files


# --- 2. the secrets' bytes are nowhere after the build -----------------------------------------------


def _markers(build: MainBuild) -> tuple[bytes, ...]:
    return (build.file_secret, build.env_secret)


def test_no_artifact_or_report_holds_a_secret(main_build: MainBuild) -> None:
    markers = _markers(main_build)
    files = sorted(main_build.out.iterdir())
    assert [path.name.removeprefix("app-1.0.0-linux-amd64.") for path in files] == [
        "aci", "aci.asc", "docker.tar", "oci.tar", "report.json",
    ]  # fmt: skip
    found = _holding(markers, ((path, path.read_bytes()) for path in files))
    for archive in (main_build.artifact(".docker.tar"), main_build.artifact(".oci.tar")):
        found += _holding(markers, ((archive / name, data) for name, data in _tar_blobs(archive).items()))
    aci = main_build.artifact(".aci")
    found += _holding(markers, iter([(aci, _maybe_gunzip(aci.read_bytes()))]))
    found += _holding(markers, iter([(Path("report on stdout"), json.dumps(main_build.report).encode())]))
    assert not found


def test_the_log_at_vv_holds_no_secret(main_build: MainBuild) -> None:
    assert "buildah" in main_build.stderr  # -vv logs every command run
    assert "/run/secrets/npmrc" in main_build.stderr  # ...with the mount, not the bytes
    assert not _holding(_markers(main_build), iter([(Path("stderr"), main_build.stderr.encode())]))


def test_no_cache_file_holds_a_secret(main_build: MainBuild) -> None:
    cache = main_build.workspace.cache
    assert [path for path, _ in _files_under(cache)]  # the build wrote its cache there
    assert not _holding(_markers(main_build), _files_under(cache))


def test_the_buildah_store_holds_no_secret(main_build: MainBuild, buildah_storage: StorageOptions) -> None:
    # The step's cached position is an image of that store: its layer is a plain folder.
    assert buildah(buildah_storage, "images", "-q")
    found = []
    for top in (buildah_storage.root, buildah_storage.runroot):
        assert top is not None
        found += _holding(_markers(main_build), _files_under(top))
    assert not found


def test_no_memory_file_holds_a_secret_after_the_build(main_build: MainBuild) -> None:
    assert not _holding(_markers(main_build), _files_under(Path("/dev/shm")))


# --- 3. a copy of the context leaves the secret's file out ------------------------------------------


def test_a_copy_of_the_whole_context_leaves_the_secret_file_out(main_build: MainBuild) -> None:
    layers = _docker_layers(main_build.artifact(".docker.tar"))
    aci = _aci_tree(main_build.artifact(".aci"))
    for names in [{name for layer in layers for name in layer}, set(aci)]:
        assert "ctx/recipe.toml" in names  # the copy ran
        assert "ctx/busybox.tar" in names
        assert "ctx/secrets/npmrc" not in names


# --- 4. a changed secret keeps the step cached, unless the step asks otherwise ------------------------


def _proof(out: Path) -> str:
    (docker,) = out.glob("*.docker.tar")
    return next(layer["proof"][1] for layer in reversed(_docker_layers(docker)) if "proof" in layer).decode()


def test_a_changed_secret_does_not_rerun_the_step(workspace: Workspace) -> None:
    first, second = _marker("first"), _marker("second")
    secret_file = workspace.project / "secrets" / "npmrc"
    secret_file.write_bytes(first)
    workspace.env["API_TOKEN"] = "token"
    out, stderr, _ = workspace.build(out="one")
    assert STEP_HEADER in stderr
    assert "[cached]" not in stderr
    secret_file.write_bytes(second)
    out, stderr, _ = workspace.build(out="two")
    assert re.search(rf"{re.escape(STEP_HEADER)} .*\[cached\]", stderr), stderr
    assert _proof(out).startswith(f"{_sha256(first)}  /run/secrets/npmrc\n")
    # Where the bytes come from is not part of the key either: another file of the context.
    (workspace.project / "secrets" / "other").write_bytes(second)
    workspace.write_recipe(RECIPE.replace('src = "secrets/npmrc"', 'src = "secrets/other"'))
    out, stderr, _ = workspace.build(out="three")
    assert re.search(rf"{re.escape(STEP_HEADER)} .*\[cached\]", stderr), stderr
    assert not _holding((first, second), _files_under(workspace.cache))


def test_rebuild_on_secret_change_reruns_the_step_when_the_secret_changes(workspace: Workspace) -> None:
    workspace.write_recipe(
        RECIPE.replace("  secrets = [", "  rebuild_on_secret_change = true\n  secrets = [")
    )
    first, second = _marker("first"), _marker("second")
    secret_file = workspace.project / "secrets" / "npmrc"
    secret_file.write_bytes(first)
    workspace.env["API_TOKEN"] = "token"
    workspace.build(out="one")
    secret_file.write_bytes(second)
    out, stderr, _ = workspace.build(out="two")
    assert re.search(rf"{re.escape(STEP_HEADER)} .*\[run: ", stderr), stderr
    assert _proof(out).startswith(f"{_sha256(second)}  /run/secrets/npmrc\n")
    # Unchanged, it is cached again: the key follows the secret, not every build.
    out, stderr, _ = workspace.build(out="three")
    assert re.search(rf"{re.escape(STEP_HEADER)} .*\[cached\]", stderr), stderr
    assert not _holding((first, second), _files_under(workspace.cache))


# --- 5. --secret overrides the recipe's source --------------------------------------------------------


def test_secret_option_overrides_the_recipes_file_and_variable(workspace: Workspace, tmp_path: Path) -> None:
    # Neither the recipe's file nor its variable exists: only the overrides are read.
    other_file, other_env = tmp_path / "other-npmrc", _marker("other-env")
    other_file.write_bytes(_marker("other-file"))
    workspace.env["OTHER_TOKEN"] = other_env.decode()
    out, _, _ = workspace.build(
        "--secret", f"id=npmrc,src={other_file}", "--secret", "id=token,env=OTHER_TOKEN"
    )
    assert _proof(out) == (
        f"{_sha256(other_file.read_bytes())}  /run/secrets/npmrc\n{_sha256(other_env)}  /root/.token\n"
    )


# --- 6. a secret that cannot be read stops the build before it starts ---------------------------------


@pytest.mark.parametrize(
    ("recipe", "index", "message"),
    [
        (RECIPE, 0, "secret 'npmrc': cannot read"),
        (RECIPE, 1, "secret 'token': the variable API_TOKEN is not set"),
        (RECIPE.replace('{ id = "npmrc", src = "secrets/npmrc" }', '{ id = "npmrc" }'), 0, "no source"),
    ],
    ids=["file absent", "variable unset", "no source"],
)
def test_an_unreadable_secret_is_exit_2_before_the_build(
    workspace: Workspace, buildah_storage: StorageOptions, recipe: str, index: int, message: str
) -> None:
    workspace.write_recipe(recipe)
    # Only the secret named is missing.
    if index == 1:
        (workspace.project / "secrets" / "npmrc").write_text("present")
    else:
        workspace.env["API_TOKEN"] = "present"
    containers_before = buildah(buildah_storage, "containers", "-q")
    out = workspace.project / "dist"
    result = dualbuild(["build", str(workspace.recipe), "--out", str(out)], workspace.env)
    assert result.returncode == 2, result.stderr
    assert f"{workspace.recipe}:{SECRETS_LINE}: {SECRETS_KEY}[{index}]: " in result.stderr
    assert message in result.stderr
    assert "1 problem" in result.stderr or result.stderr.count("error: ") == 1
    assert "] step " not in result.stderr  # nothing was built
    assert "Traceback" not in result.stderr
    assert not out.exists() or not list(out.iterdir())
    assert buildah(buildah_storage, "containers", "-q") == containers_before == ""


# --- 7. a recipe names no host file -------------------------------------------------------------------


def test_an_absolute_src_in_the_recipe_is_refused_at_validation(workspace: Workspace) -> None:
    workspace.write_recipe(RECIPE.replace('src = "secrets/npmrc"', 'src = "/etc/shadow"'))
    result = dualbuild(["validate", str(workspace.recipe)], workspace.env)
    assert result.returncode == 2, result.stderr
    assert (
        f"{workspace.recipe}:{SECRETS_LINE}: {SECRETS_KEY}[0].src: '/etc/shadow' is absolute" in result.stderr
    )
    assert "--secret id=npmrc,src=/etc/shadow" in result.stderr
