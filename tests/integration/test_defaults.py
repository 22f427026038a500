"""Defaults that are right for real recipes, with real buildah: args, env, network, isolation, cache."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualbuild.builder.network import NAME_PREFIX, NETNS_DIR
from tests.integration.helpers import Builder, dualbuild, write_recipe
from tests.support import free_port, require_tools

ARGS = """
[args]
V = "plain"
BASE = "busybox.tar"
FLAVOUR = "vanilla"

[[stages]]
from = "rootfs:${BASE}"

  [[stages.steps]]
  run = 'printf "%s" "${V}" > /v.txt; printf "%s" "$SOURCE_DATE_EPOCH" > /sde.txt'
"""


def test_a_build_arg_is_data_in_a_run_string_and_substituted_in_the_base(
    builder: Builder, context: Path
) -> None:
    recipe = write_recipe(context, ARGS)
    evil = "$(id -u)`id -u`; touch /pwned"
    with builder.build(recipe, build_args={"V": evil}) as image:
        assert (image.rootfs / "v.txt").read_text() == evil
        assert not (image.rootfs / "pwned").exists()
        # SOURCE_DATE_EPOCH is in every run step's environment, so tools honour it.
        assert (image.rootfs / "sde.txt").read_text() == "0"


def test_a_bad_value_from_a_build_arg_is_exit_2_before_anything_runs(
    project: Path, cli_env: dict[str, str]
) -> None:
    (project / "recipe.toml").write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\n[args]\nDEST = "/etc/motd"\nSRC = "greeting.txt"\n'
        '[[stages]]\nfrom = "rootfs:busybox.tar"\n'
        '  [[stages.steps]]\n  write = "${DEST}"\n  content = "x"\n'
        '  [[stages.steps]]\n  copy = ["${SRC}"]\n  to = "/srv/"\n'
    )
    newline = dualbuild(["build", str(project / "recipe.toml"), "--build-arg", "DEST=/etc/a\nb"], cli_env)
    assert newline.returncode == 2, newline.stderr
    assert "stages[0].steps[0].write: the path holds a NUL or newline character" in newline.stderr
    assert "after substituting build args into '${DEST}'" in newline.stderr
    shadow = dualbuild(["build", str(project / "recipe.toml"), "--build-arg", "SRC=/etc/shadow"], cli_env)
    assert shadow.returncode == 2, shadow.stderr
    assert "stages[0].steps[1].copy[0]: '/etc/shadow' is absolute" in shadow.stderr
    assert "Traceback" not in newline.stderr + shadow.stderr
    assert not (project / "dist").exists()


def test_labels_env_and_base_take_args_and_app_env_expands_path(
    project: Path, cli_env: dict[str, str], busybox_archives: dict[str, Path]
) -> None:
    shutil.copy(busybox_archives["docker"], project / "base.docker.tar")
    (project / "recipe.toml").write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\nlabels = { flavour = "${FLAVOUR}" }\n'
        '[args]\nFLAVOUR = "vanilla"\nBASE = "base.docker.tar"\n'
        '[[stages]]\nfrom = "docker-archive:${BASE}"\n'
        '[app]\nenv = { FLAVOUR = "${FLAVOUR}", PATH = "/opt/app/bin:$PATH", BASE_COPY = "${BASE_VAR}" }\n'
        '[output]\nformats = ["docker"]\n'
    )
    built = dualbuild(["build", str(project / "recipe.toml"), "--build-arg", "FLAVOUR=mint"], cli_env)
    assert built.returncode == 0, built.stderr
    with tarfile.open(project / "dist" / "t-1-linux-amd64.docker.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(archive.extractfile(manifest[0]["Config"]))["config"]  # type: ignore[arg-type]
    assert config["Labels"]["flavour"] == "mint"  # type: ignore[index]
    env = dict(item.split("=", 1) for item in config["Env"])  # type: ignore[union-attr]
    assert env["FLAVOUR"] == "mint"
    # The base (buildah's config) sets PATH; $PATH expands against it, as Docker's ENV does.
    assert env["PATH"].startswith("/opt/app/bin:/")
    assert "$" not in env["PATH"]
    assert "/bin" in env["PATH"].split(":")
    assert env["BASE_COPY"] == "from-base"


@pytest.fixture
def loopback_service() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 only: what a run step must not reach by default."""
    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


def _probe(port: int, network: str | None) -> str:
    setting = f'\n  network = "{network}"' if network else ""
    name = network or "default"
    return f"""
  [[stages.steps]]
  run = '''printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 60 127.0.0.1 {port} | head -1 > /probe-{name}
    ip -o link | grep -c . > /links-{name}
    if [ {name} != host ]; then
      (nc -l -p 7070 -e echo served-on-loopback &)
      for try in $(seq 600); do
        nc -w 60 127.0.0.1 7070 < /dev/null > /loopback-{name} && [ -s /loopback-{name} ] && break
        sleep 0.5
      done
    fi'''{setting}
"""


def test_run_steps_get_a_private_network_by_default(
    builder: Builder, context: Path, loopback_service: int
) -> None:
    require_tools("slirp4netns", "ip")
    body = '[[stages]]\nfrom = "rootfs:busybox.tar"\n' + "".join(
        _probe(loopback_service, network) for network in (None, "host", "none")
    )
    recipe = write_recipe(context, body)
    with builder.build(recipe) as image:
        root = image.rootfs
        # The default reaches no service on the host's loopback; "host" does, when asked.
        assert (root / "probe-default").read_text() == ""
        assert (root / "probe-host").read_text().startswith("HTTP/1.0 200")
        # Its own namespace: loopback and the uplink (tap0), not the host's interfaces.
        assert (root / "links-default").read_text().strip() == "2"
        assert (root / "links-none").read_text().strip() == "1"
        # Every mode keeps a working loopback of its own.
        for name in ("default", "none"):
            assert (root / f"loopback-{name}").read_text() == "served-on-loopback\n", name
    # Nothing of the private network is left: no namespace file, no slirp4netns.
    assert not list(NETNS_DIR.glob(f"{NAME_PREFIX}{os.getpid()}-*"))


def test_no_cache_leaves_the_cache_holding_the_fresh_results(project: Path, cli_env: dict[str, str]) -> None:
    recipe = project / "recipe.toml"
    recipe.write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\n[[stages]]\nfrom = "rootfs:busybox.tar"\n'
        "  [[stages.steps]]\n  run = 'cat /proc/sys/kernel/random/uuid > /stamp'\n"
        '[output]\nformats = ["docker"]\n'
    )

    def stamp() -> str:
        with tarfile.open(project / "dist" / "t-1-linux-amd64.docker.tar") as archive:
            manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
            # The last layer: the stage's own, above the rootfs base's.
            layer = archive.extractfile(manifest[0]["Layers"][-1])
            assert layer is not None
            with tarfile.open(fileobj=layer) as tree:
                member = tree.extractfile("stamp")
                assert member is not None
                return member.read().decode()

    assert dualbuild(["build", str(recipe)], cli_env).returncode == 0
    first = stamp()
    fresh = dualbuild(["-v", "build", str(recipe), "--no-cache"], cli_env)
    assert fresh.returncode == 0, fresh.stderr
    second = stamp()
    # Per-step timings: in the log with -v, and in the report.
    assert re.search(r"\[1/1 stage1\] step 1/1 run cat .* took \d+\.\d\ds", fresh.stderr), fresh.stderr
    report = project / "dist" / "t-1-linux-amd64.report.json"
    (timing,) = json.loads(report.read_text())["step_timings"]
    assert (timing["stage"], timing["step"], timing["cached"]) == ("stage1", 1, False)
    assert timing["seconds"] > 0
    assert second != first
    (project / "dist" / "t-1-linux-amd64.docker.tar").unlink()  # not "up to date": the cache decides
    again = dualbuild(["build", str(recipe)], cli_env)
    assert again.returncode == 0, again.stderr
    assert "[cached]" in again.stderr
    assert stamp() == second  # the fresh result, not the older one
    assert json.loads(report.read_text())["step_timings"][0]["cached"] is True


def _sleepers(seconds: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] in ([b"sleep", seconds.encode()], [b"/bin/sleep", seconds.encode()]):
            found.append(int(cmdline.parent.name))
    return found


def test_chroot_when_asked_warns_and_kills_what_a_step_leaves_running(
    builder: Builder, context: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = write_recipe(
        context,
        '[[stages]]\nfrom = "rootfs:busybox.tar"\n  [[stages.steps]]\n'
        "  run = 'sleep 4711 & echo started'\n  network = \"none\"\n",
    )
    with builder.build(recipe, isolation="chroot") as image:
        assert image.rootfs.is_dir()
        assert _sleepers("4711") == []  # gone right after its step, not at the end of the build
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("run steps are not contained" in w for w in warnings)
    assert any("killed 1 process(es) the run step left running" in w for w in warnings)


def test_the_default_isolation_contains_run_steps(builder: Builder, context: Path) -> None:
    recipe = write_recipe(
        context, '[[stages]]\nfrom = "rootfs:busybox.tar"\n  [[stages.steps]]\n  run = "true"\n'
    )
    with builder.build(recipe):
        pass
    assert not any("chroot" in line for line in builder.output)
