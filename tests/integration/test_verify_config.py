"""Real builds and conversions verify: their Docker config says what their signed ACI says."""

from __future__ import annotations

from pathlib import Path

from tests.integration.helpers import dualbuild

RECIPE = """\
[image]
name = "example.com/verify/every-field"
version = "1.0"
tags = ["latest"]
labels = { "org.opencontainers.image.source" = "https://example.com/src", team = "verify" }
annotations = { homepage = "https://example.com", authors = "The dualbuild team" }

[[stages]]
from = "rootfs:busybox.tar"

  [[stages.steps]]
  run = "echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'staff2:x:60:' >> /etc/group"

[app]
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo hello"]
user = "app"
group = "staff2"
workdir = "/srv"
env = { GREETING = "hello", PATH = "/opt/bin:$PATH" }
ports = [{ name = "http", port = 8080 }, { name = "dns", port = 53, protocol = "udp", count = 2 }]
volumes = [{ name = "data", path = "/data" }, { name = "conf", path = "/conf", read_only = true }]
stop_signal = "SIGINT"
healthcheck = { cmd = ["/bin/true"], interval = "30s", retries = 3 }

[output]
formats = ["docker", "aci"]
"""


def test_a_build_with_every_app_field_and_its_conversions_verify(
    project: Path, cli_env: dict[str, str], busybox_archives: dict[str, Path]
) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    built = dualbuild(["build", str(project / "recipe.toml"), "--out", str(project / "dist")], cli_env)
    assert built.returncode == 0, built.stderr
    verified = dualbuild(["verify", str(project / "dist")], cli_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A base's config (env, cmd, workdir, label, port: see busybox_archives) carried over, both ways.
    converted = project / "converted"
    to_aci = dualbuild(
        ["convert", str(busybox_archives["docker"]), "--name", "example.com/verify/busybox",
         "--version", "1.0", "--out", str(converted)],
        cli_env,
    )  # fmt: skip
    assert to_aci.returncode == 0, to_aci.stderr
    verified = dualbuild(["verify", str(converted)], cli_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (aci,) = converted.glob("*.aci")
    back = project / "back"
    to_docker = dualbuild(["convert", str(aci), "--version", "2.0", "--out", str(back)], cli_env)
    assert to_docker.returncode == 0, to_docker.stderr
    verified = dualbuild(["verify", str(back)], cli_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
