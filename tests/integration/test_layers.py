"""Layered images: the base's own layers kept byte for byte, one layer per stage or step, whiteouts.

Real clients read them: docker load + run, podman load, skopeo against a real registry, and
`dualbuild verify` applying the layers in order against the ACI.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from dualbuild.builder.storage import StorageOptions
from dualbuild.verify.trees import verify
from tests.integration.helpers import Docker, buildah, dualbuild, push_to_registry
from tests.integration.test_emit_clients import PodmanStore
from tests.support import HANG_SECONDS

IMAGE = "example.com/layered:1.0.0"
RECIPE = """
[image]
name = "example.com/layered"
version = "{version}"

[[stages]]
name = "build"
from = "{base}"
{tls}
  [[stages.steps]]
  run = '''mkdir -p /opt/app && echo built > /opt/app/out && rm /etc/base-junk &&
    rm -rf /usr/share/base && mkdir /usr/share/base && echo new > /usr/share/base/only'''

[[stages]]
name = "final"
from = "stage:build"

  [[stages.steps]]
  write = "/opt/app/config"
  content = "{config}"

  [[stages.steps]]
  remove = ["/bin/cat"]

  [[stages.steps]]
  run = "echo ran > /opt/app/ran"

[app]
entrypoint = ["/bin/sh", "-c"]
cmd = ["cat /opt/app/out /opt/app/config; ls /etc/base-junk /bin/cat /usr/share/base 2>&1; true"]

[output]
formats = ["docker", "oci", "aci"]
{layers}
"""


@pytest.fixture(scope="session")
def two_layer_base(
    buildah_storage: StorageOptions, busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """busybox as a docker-archive of two layers; the second adds files the build removes."""
    out = tmp_path_factory.mktemp("layered-base") / "base.docker.tar"
    container = buildah(buildah_storage, "from", "--quiet", "scratch")
    try:
        buildah(buildah_storage, "add", "--quiet", container, str(busybox_rootfs), "/")
        first = buildah(buildah_storage, "commit", "--quiet", container)
    finally:
        buildah(buildah_storage, "rm", container)
    container = buildah(buildah_storage, "from", "--quiet", first)
    try:
        mount = Path(buildah(buildah_storage, "mount", container))
        (mount / "etc" / "base-junk").write_text("removed later\n")
        (mount / "usr" / "share" / "base").mkdir(parents=True)
        for name in ("a", "b"):
            (mount / "usr" / "share" / "base" / name).write_text(f"{name}\n")
        image = buildah(buildah_storage, "commit", "--quiet", container)
    finally:
        buildah(buildah_storage, "rm", container)
    buildah(buildah_storage, "push", "--quiet", image, f"docker-archive:{out}:base:latest")
    buildah(buildah_storage, "rmi", image, first)
    return out


def write_project(
    directory: Path,
    base: Path | str,
    *,
    layers: str | None = None,
    version: str = "1.0.0",
    config: str = "x=1",
    output: str = "",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(base, Path):
        shutil.copy(base, directory / "base.docker.tar")
        reference, tls = "docker-archive:base.docker.tar", ""
    else:
        reference, tls = base, "tls_verify = false"
    recipe = directory / "recipe.toml"
    recipe.write_text(
        RECIPE.format(
            base=reference,
            tls=tls,
            version=version,
            config=config,
            layers=(f'layers = "{layers}"\n' if layers else "") + output,
        )
    )
    return recipe


def build(recipe: Path, env: dict[str, str], *args: str) -> dict[str, Path]:
    result = dualbuild(["build", str(recipe), "--json", *args], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {fmt: Path(artifact["file"]) for fmt, artifact in report["artifacts"].items()}


def docker_image(archive: Path) -> tuple[list[str], dict[str, object], list[str]]:
    """The layer paths, the config and the layers' blob digests of a docker-archive."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
        digests = []
        for path in manifest["Layers"]:
            digests.append("sha256:" + hashlib.sha256(tar.extractfile(path).read()).hexdigest())  # type: ignore[union-attr]
    return manifest["Layers"], config, digests


def base_image(archive: Path) -> tuple[list[str], list[str]]:
    """The diff_ids and layer blob digests of the base docker-archive."""
    _, config, digests = docker_image(archive)
    return config["rootfs"]["diff_ids"], digests  # type: ignore[index]


def layer_names(archive: Path, number: int) -> list[str]:
    with tarfile.open(archive) as tar:
        path = json.loads(tar.extractfile("manifest.json").read())[0]["Layers"][number]  # type: ignore[union-attr]
        with tarfile.open(fileobj=tar.extractfile(path)) as layer:
            return layer.getnames()


def test_stages_keep_the_base_layers_and_add_one_per_stage_with_whiteouts(
    two_layer_base: Path, cli_env: dict[str, str], tmp_path: Path, docker: Docker
) -> None:
    files = build(write_project(tmp_path / "p", two_layer_base), cli_env)
    paths, config, digests = docker_image(files["docker"])
    base_ids, base_digests = base_image(two_layer_base)
    diff_ids = config["rootfs"]["diff_ids"]  # type: ignore[index]
    # The base's two layers byte for byte, then one per stage of the final stage's chain.
    assert len(paths) == 4
    assert diff_ids[:2] == base_ids
    assert digests[:2] == base_digests
    history = [entry for entry in config["history"] if not entry.get("empty_layer")]  # type: ignore[attr-defined]
    assert len(history) == 4
    assert [entry["created_by"] for entry in history[2:]] == [
        "dualbuild: stage build",
        "dualbuild: stage final",
    ]
    build_layer, final_layer = layer_names(files["docker"], 2), layer_names(files["docker"], 3)
    assert "etc/.wh.base-junk" in build_layer
    assert "usr/share/base/.wh..wh..opq" in build_layer
    assert "bin/.wh.cat" in final_layer
    assert "opt/app/config" in final_layer
    assert "opt/app/out" not in final_layer  # the build stage's file is in the build stage's layer
    assert verify(files["docker"], files["aci"]) == []

    docker("load", "-i", str(files["docker"]))
    try:
        ran = docker("run", "--rm", "--network", "none", "example.com/layered:1.0.0").stdout
        assert "built\nx=1" in ran
        assert "base-junk: No such file" in ran
        assert "/bin/cat: No such file" in ran
        listing = docker(
            "run", "--rm", "--network", "none", "example.com/layered:1.0.0", "ls /usr/share/base"
        )
        assert listing.stdout.split() == ["only"]  # the opaque whiteout hid a and b
    finally:
        docker("rmi", "example.com/layered:1.0.0", check=False)


def test_steps_squash_and_the_oci_archive(
    two_layer_base: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    steps = build(write_project(tmp_path / "steps", two_layer_base, layers="steps"), cli_env)
    squash = build(write_project(tmp_path / "squash", two_layer_base, layers="squash"), cli_env)
    assert len(docker_image(steps["docker"])[0]) == 2 + 1 + 3
    assert len(docker_image(squash["docker"])[0]) == 1
    for files in (steps, squash):
        assert verify(files["docker"], files["aci"]) == []
    # The OCI archive: the base's blobs as they are, the build's own gzip; skopeo reads it.
    inspected = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci-archive:{steps['oci']}"], capture_output=True, text=True,
        check=True, timeout=HANG_SECONDS,
    )  # fmt: skip
    layers = json.loads(inspected.stdout)["layers"]
    # podman takes both archives, with every layer.
    # podman wants a runroot of under 50 bytes: a folder of its own in /tmp, not in tmp_path.
    store = PodmanStore(Path(tempfile.mkdtemp(prefix="dbp-", dir="/tmp")))
    try:
        assert store.load(steps["docker"]) == [IMAGE]
        count = subprocess.run(
            [*store.argv, "image", "inspect", "--format", "{{len .RootFS.Layers}}", IMAGE],
            capture_output=True, text=True, check=True, timeout=HANG_SECONDS,
        )  # fmt: skip
        assert count.stdout.strip() == "6"
        assert store.load(steps["oci"])
    finally:
        subprocess.run([*store.argv, "rmi", "--all", "--force"], capture_output=True, check=False)
        shutil.rmtree(store.base, ignore_errors=True)
    _, base_digests = base_image(two_layer_base)
    assert [layer["digest"] for layer in layers[:2]] == base_digests
    assert {layer["mediaType"] for layer in layers[2:]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}


def test_layers_are_reproducible_and_shared_by_two_images_on_one_base(
    two_layer_base: Path, cli_env: dict[str, str], tmp_path: Path, docker: Docker
) -> None:
    first = build(write_project(tmp_path / "a", two_layer_base), cli_env, "--no-cache")
    again = build(write_project(tmp_path / "b", two_layer_base), cli_env, "--no-cache")
    other = build(write_project(tmp_path / "c", two_layer_base, version="1.0.1", config="x=2"), cli_env)
    assert docker_image(first["docker"])[2] == docker_image(again["docker"])[2]
    ids, other_ids = (docker_image(files["docker"])[1]["rootfs"]["diff_ids"] for files in (first, other))  # type: ignore[index]
    # Only the last stage's layer differs: the base's and the build stage's are the same bytes.
    assert ids[:3] == other_ids[:3]
    assert ids[3] != other_ids[3]
    root = Path(docker("info", "--format", "{{.DockerRootDir}}").stdout.strip())

    def stored_layers() -> int:
        return sum(1 for layerdb in root.glob("image/*/layerdb/sha256") for _ in layerdb.iterdir())

    before = stored_layers()
    docker("load", "-i", str(first["docker"]))
    docker("load", "-i", str(other["docker"]))
    try:
        # 4 layers of one image, and only the top layer of the other: the rest are shared.
        assert stored_layers() - before == 5
    finally:
        docker("rmi", "example.com/layered:1.0.0", "example.com/layered:1.0.1", check=False)


def test_a_registry_base_keeps_the_registry_s_compressed_blobs(
    two_layer_base: Path, cli_env: dict[str, str], tmp_path: Path, registry: str
) -> None:
    reference = f"{registry}/test/layered-base:1"
    push_to_registry(two_layer_base, reference)
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"], capture_output=True,
        text=True, check=True, timeout=HANG_SECONDS,
    )  # fmt: skip
    pushed = [layer["digest"] for layer in json.loads(raw.stdout)["layers"]]
    files = build(write_project(tmp_path / "r", reference), cli_env)
    _, _, digests = docker_image(files["docker"])
    assert digests[:2] == pushed  # the registry's gzip blobs, not a recompression
    assert verify(files["docker"], files["aci"]) == []


def test_an_aci_dependency_chain_renders_the_docker_tree_and_is_published_whole(
    two_layer_base: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    recipe = write_project(tmp_path / "chain", two_layer_base, output='aci_layers = "dependencies"\n')
    result = dualbuild(["build", str(recipe), "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["artifacts"]
    layers = report["aci"]["layers"]
    assert [layer["version"] for layer in layers] == [
        "layer-" + diff_id.removeprefix("sha256:") for diff_id in report["docker"]["diff_ids"]
    ]
    top = Path(report["aci"]["file"])
    for aci in [top, *(Path(layer["file"]) for layer in layers)]:
        subprocess.run(["actool", "validate", str(aci)], check=True, timeout=HANG_SECONDS)
        subprocess.run(
            ["gpg", "--verify", f"{aci}.asc", str(aci)], env=cli_env, check=True, capture_output=True,
            timeout=HANG_SECONDS,
        )  # fmt: skip
    with tarfile.open(top) as tar:
        manifest = json.loads(tar.extractfile("manifest").read())  # type: ignore[union-attr]
        assert tar.getnames() == ["manifest", "rootfs"]  # the image ACI holds no file itself
    for dependency, layer in zip(manifest["dependencies"], layers, strict=True):
        with Path(layer["file"]).open("rb") as file:
            raw = gzip.decompress(file.read())
        assert dependency["imageID"] == "sha512-" + hashlib.sha512(raw).hexdigest()
    whitelist = set(manifest["pathWhitelist"])
    assert "/opt/app/out" in whitelist
    assert not {"/etc/base-junk", "/bin/cat", "/usr/share/base/a"} & whitelist
    # Rendered as rkt renders it, the chain is the Docker image's tree; dualbuild verify says so.
    assert verify(Path(report["docker"]["file"]), top) == []
    checked = dualbuild(["verify", str(top.parent)], cli_env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    site = tmp_path / "site"
    publish = ["publish", str(recipe), "--aci", str(site), "--aci-url", "https://example.com"]
    published = dualbuild(publish, cli_env)
    assert published.returncode == 0, published.stderr
    images = site / "images" / "example.com"
    for layer in layers:
        name = f"layered-{layer['version']}-linux-amd64.aci"
        assert (images / name).read_bytes() == Path(layer["file"]).read_bytes()
        assert (images / f"{name}.asc").is_file()
    assert dualbuild(publish, cli_env).returncode == 0  # again: the same bytes, nothing refused

    Path(layers[1]["file"]).unlink()
    missing = verify(Path(report["docker"]["file"]), top)
    assert any("is not beside" in difference for difference in missing)
