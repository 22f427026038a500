"""`dualbuild build` end to end, as a user runs it: real buildah, gpg, actool; signals; exit codes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from dualbuild.builder.storage import StorageOptions
from dualbuild.gpg import gpg_env, stop_agent
from dualbuild.sign.keys import export_public_key
from tests.integration.helpers import DUALBUILD, Docker, buildah, dualbuild
from tests.support import HANG_SECONDS, ROOT, require_tools

RECIPE = """
[image]
name = "example.com/e2e/hello"
version = "2.0.0"
tags = ["latest"]
annotations = { homepage = "https://example.com" }

[args]
WORD = "dual"

[[stages]]
name = "build"
from = "rootfs:busybox.tar"
  [[stages.steps]]
  run = "mkdir -p /out && echo ${WORD}build > /out/word"

[[stages]]
name = "final"
from = "rootfs:busybox.tar"
  [[stages.steps]]
  copy = "/out/word"
  from = "build"
  to = "/srv/"
  [[stages.steps]]
  copy = "greeting.txt"
  to = "/srv/greeting.txt"
  [[stages.steps]]
  write = "/usr/local/bin/hello"
  content = "#!/bin/sh\\ncat /srv/word /srv/greeting.txt\\n"
  mode = "0755"

[app]
entrypoint = ["/usr/local/bin/hello"]
workdir = "/srv"
stop_signal = "SIGQUIT"

[output]
formats = ["docker", "aci", "oci"]
source_date_epoch = 1700000000
"""


def test_build_writes_signed_valid_artifacts_and_a_report(
    project: Path, cli_env: dict[str, str], signing_home: tuple[Path, str], buildah_storage: StorageOptions
) -> None:
    require_tools("actool", "skopeo")
    (project / "recipe.toml").write_text(RECIPE)
    result = dualbuild(["build", str(project / "recipe.toml"), "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds only the report; logs went to stderr
    assert "[2/2 final] step 3/3 write /usr/local/bin/hello" in result.stderr
    assert "app.stop_signal: the aci format has no stop signal" in result.stderr
    artifacts = report["artifacts"]
    assert set(artifacts) == {"docker", "aci", "oci"}
    dist = project / "dist"
    aci = dist / "hello-2.0.0-linux-amd64.aci"
    assert Path(artifacts["aci"]["file"]) == aci
    assert artifacts["aci"]["signing_key"] == signing_home[1]
    assert sorted(p.name for p in dist.iterdir()) == [
        "hello-2.0.0-linux-amd64.aci",
        "hello-2.0.0-linux-amd64.aci.asc",
        "hello-2.0.0-linux-amd64.docker.tar",
        "hello-2.0.0-linux-amd64.oci.tar",
        "hello-2.0.0-linux-amd64.report.json",
    ]
    assert json.loads((dist / "hello-2.0.0-linux-amd64.report.json").read_text()) == report
    subprocess.run(["actool", "validate", str(aci)], check=True)
    # Verify as rkt would: a fresh keyring holding only the exported public key.
    home, fingerprint = signing_home
    public = project / "pub.asc"
    export_public_key(fingerprint, public, gnupghome=home)
    with tempfile.TemporaryDirectory(prefix="dbv-", dir="/tmp") as fresh:
        env = gpg_env(Path(fresh))
        subprocess.run(["gpg", "--batch", "--import", str(public)], env=env, check=True, capture_output=True)
        verify = subprocess.run(
            ["gpg", "--batch", "--verify", f"{aci}.asc", str(aci)], env=env, capture_output=True, text=True
        )
        stop_agent(Path(fresh))
    assert verify.returncode == 0, verify.stderr
    assert "Good signature" in verify.stderr
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci-archive:{artifacts['oci']['file']}"],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/hello"]
    assert not buildah(buildah_storage, "containers", "-q")


def test_an_env_name_older_appc_readers_reject_is_warned_in_the_log_and_the_report(
    project: Path, cli_env: dict[str, str]
) -> None:
    require_tools("actool")
    (project / "recipe.toml").write_text(
        '[image]\nname = "example.com/e2e/env"\nversion = "1.0.0"\n'
        '[[stages]]\nfrom = "rootfs:busybox.tar"\n'
        '[app]\nentrypoint = ["/bin/true"]\nenv = { "dotted.name" = "1", PLAIN = "2" }\n'
        '[output]\nformats = ["aci"]\nsource_date_epoch = 1700000000\n'
    )
    result = dualbuild(["build", str(project / "recipe.toml"), "--no-sign", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    warning = (
        "app.env: 'dotted.name' is valid since appc 0.8.11 only; readers of an older spec "
        "(docker2aci's, rkt before 1.29) reject the whole ACI manifest"
    )
    assert warning in result.stderr
    report = json.loads(result.stdout)
    assert warning in report["warnings"]
    assert "PLAIN" not in " ".join(report["warnings"])
    # The ACI carries it: appc 0.8.11 (actool) accepts the name.
    aci = Path(report["artifacts"]["aci"]["file"])
    subprocess.run(["actool", "validate", str(aci)], check=True)
    manifest = subprocess.run(
        ["actool", "cat-manifest", str(aci)], capture_output=True, text=True, check=True
    ).stdout
    assert {"name": "dotted.name", "value": "1"} in json.loads(manifest)["app"]["environment"]


def test_same_recipe_gives_byte_identical_artifacts(project: Path, cli_env: dict[str, str]) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    digests = []
    for out in ("one", "two"):
        result = dualbuild(
            ["build", str(project / "recipe.toml"), "--out", str(project / out), "--json"], cli_env
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        digests.append({name: a["sha256"] for name, a in report["artifacts"].items()})
    assert digests[0] == digests[1]


def test_missing_signing_key_fails_before_building(project: Path, cli_env: dict[str, str]) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    env = {**cli_env, "DUALBUILD_SIGN_KEY": "no-such-key@example.com"}
    result = dualbuild(["build", str(project / "recipe.toml")], env)
    assert result.returncode == 4, result.stderr
    assert "no secret key 'no-such-key@example.com'" in result.stderr
    assert "step" not in result.stderr  # nothing was built
    assert not (project / "dist").exists() or not list((project / "dist").iterdir())


def test_no_sign_writes_no_signature(project: Path, cli_env: dict[str, str]) -> None:
    (project / "recipe.toml").write_text(RECIPE.replace('"docker", "aci", "oci"', '"aci"'))
    env = {k: v for k, v in cli_env.items() if k != "DUALBUILD_SIGN_KEY"}
    refused = dualbuild(["build", str(project / "recipe.toml")], env)
    assert refused.returncode == 4
    assert "no signing key is set" in refused.stderr
    result = dualbuild(["build", str(project / "recipe.toml"), "--no-sign"], env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (project / "dist").iterdir()) == [
        "hello-2.0.0-linux-amd64.aci",
        "hello-2.0.0-linux-amd64.report.json",
    ]


def test_missing_buildah_exits_3_with_a_hint(project: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gpg", "gpgconf", "gpg-agent"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    env = {**cli_env, "PATH": str(bin_dir)}
    result = dualbuild(["build", str(project / "recipe.toml")], env)
    assert result.returncode == 3, result.stderr
    assert "could not find 'buildah'" in result.stderr
    assert "hint: install it: apt-get install buildah" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_during_a_run_step_cleans_up(
    project: Path, cli_env: dict[str, str], buildah_storage: StorageOptions, signum: int, code: int
) -> None:
    (project / "recipe.toml").write_text(
        RECIPE.replace('run = "mkdir -p /out', 'run = "echo started; sleep 600; mkdir -p /out')
    )
    process = subprocess.Popen(
        [DUALBUILD, "build", str(project / "recipe.toml")], env=cli_env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    seen = ""
    # The step's own output (not its header, which names the command) says it is running.
    while "| started" not in seen and (line := process.stderr.readline()):
        seen += line
    assert "| started" in seen, seen
    process.send_signal(signum)
    rest = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=HANG_SECONDS) == code, rest
    assert "interrupted" in rest
    assert "Traceback" not in rest
    assert not buildah(buildah_storage, "containers", "-q"), rest
    dist = project / "dist"
    assert not dist.exists() or not list(dist.iterdir())


def test_demo_recipe_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    assert readme[2:5] == ["```sh", readme[3], readme[4]]
    assert readme[3].startswith("make demo")
    assert readme[4].startswith("make test")


def _aci_file(aci: Path, name: str) -> bytes:
    import tarfile

    with tarfile.open(aci, "r:gz") as archive:
        member = archive.extractfile(f"rootfs/{name}")
        assert member is not None
        return member.read()


def _step_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " step " in line and line.startswith("[")]


def test_step_cache_hits_explains_and_never_goes_stale(project: Path, cli_env: dict[str, str]) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    recipe = str(project / "recipe.toml")
    aci = project / "dist" / "hello-2.0.0-linux-amd64.aci"
    assert dualbuild(["cache", "prune"], cli_env).returncode == 0  # other tests built this recipe too
    first = dualbuild(["build", recipe], cli_env)
    assert first.returncode == 0, first.stderr
    assert all("[run: " in line for line in _step_lines(first.stderr))

    unchanged = dualbuild(["build", recipe], cli_env)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "up to date" in unchanged.stderr
    assert not _step_lines(unchanged.stderr)

    aci.unlink()  # the artifacts are gone: every step still comes from the cache
    rebuilt = dualbuild(["build", recipe], cli_env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    lines = _step_lines(rebuilt.stderr)
    assert len(lines) == 4
    assert all(line.endswith("[cached]") for line in lines), lines

    (project / "greeting.txt").write_text("changed greeting\n")
    changed = dualbuild(["build", recipe], cli_env)
    assert changed.returncode == 0, changed.stderr
    lines = _step_lines(changed.stderr)
    assert lines[0].endswith("[cached]")  # build stage
    assert lines[1].endswith("[cached]")  # copy from the build stage comes before the change
    assert lines[2].endswith("[run: input changed: greeting.txt]")
    assert lines[3].endswith("[run: the parent changed]")
    assert _aci_file(aci, "srv/greeting.txt") == b"changed greeting\n"

    forced = dualbuild(["build", recipe, "--no-cache"], cli_env)
    assert forced.returncode == 0, forced.stderr
    assert all(line.endswith("[run: --no-cache]") for line in _step_lines(forced.stderr))

    listing = dualbuild(["cache", "ls"], cli_env)
    assert listing.returncode == 0
    assert len(listing.stdout.splitlines()) >= 6
    pruned = dualbuild(["cache", "prune", "--older-than", "1d"], cli_env)
    assert pruned.stdout.strip() == "removed 0 cached trees"
    everything = dualbuild(["cache", "prune"], cli_env)
    assert everything.returncode == 0
    assert dualbuild(["cache", "ls"], cli_env).stdout == ""
    bad = dualbuild(["cache", "prune", "--older-than", "soon"], cli_env)
    assert bad.returncode == 2


def test_check_reproducible(project: Path, cli_env: dict[str, str]) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    good = dualbuild(["build", str(project / "recipe.toml"), "--check-reproducible"], cli_env)
    assert good.returncode == 0, good.stderr
    assert "reproducible: two builds in fresh storage gave identical artifacts" in good.stderr
    (project / "recipe.toml").write_text(
        RECIPE.replace("echo ${WORD}build > /out/word", "cat /proc/sys/kernel/random/uuid > /out/word")
    )
    bad = dualbuild(["build", str(project / "recipe.toml"), "--check-reproducible"], cli_env)
    assert bad.returncode == 1, bad.stderr
    assert "the two builds differ" in bad.stderr
    # Each archive names the entry inside its layer, though the layers' digests differ.
    for archive in (".docker.tar:blobs/sha256/", ".oci.tar:blobs/sha256/", ".aci: rootfs/"):
        assert re.search(rf"{re.escape(archive)}(?:[0-9a-f]{{64}}: )?srv/word: content", bad.stderr), archive


def test_docker_runs_the_built_image_and_verify_catches_one_changed_byte(
    project: Path, cli_env: dict[str, str], signing_home: tuple[Path, str], docker: Docker
) -> None:
    (project / "recipe.toml").write_text(RECIPE)
    result = dualbuild(["build", str(project / "recipe.toml")], cli_env)
    assert result.returncode == 0, result.stderr
    dist = project / "dist"
    loaded = docker("load", "-i", str(dist / "hello-2.0.0-linux-amd64.docker.tar"))
    assert "Loaded image: example.com/e2e/hello:2.0.0" in loaded.stdout
    ran = docker("run", "--rm", "--network", "none", "example.com/e2e/hello:latest")
    assert ran.stdout == "dualbuild\nhello from the context\n"
    home, fingerprint = signing_home
    public = project / "pub.asc"
    export_public_key(fingerprint, public, gnupghome=home)
    good = dualbuild(["verify", str(dist), "--keyring", str(public)], cli_env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("ok   hello-2.0.0-linux-amd64")
    aci = dist / "hello-2.0.0-linux-amd64.aci"
    data = bytearray(aci.read_bytes())
    data[len(data) // 2] ^= 0x01
    aci.write_bytes(bytes(data))
    bad = dualbuild(["verify", str(dist), "--keyring", str(public)], cli_env)
    assert bad.returncode == 1
    assert "FAIL hello-2.0.0-linux-amd64" in bad.stdout
    assert "signature: " in bad.stdout
    assert "does not verify" in bad.stdout
    assert "1 of 1 checked builds failed verification" in bad.stderr


def test_convert_both_ways(
    project: Path, cli_env: dict[str, str], busybox_archives: dict[str, Path], docker: Docker
) -> None:
    require_tools("actool")
    out = project / "converted"
    to_aci = dualbuild(
        [
            "convert",
            str(busybox_archives["docker"]),
            "--name",
            "example.com/converted/busybox",
            "--version",
            "1.0",
            "--out",
            str(out),
        ],
        cli_env,
    )
    assert to_aci.returncode == 0, to_aci.stderr
    aci = out / "busybox-1.0-linux-amd64.aci"
    subprocess.run(["actool", "validate", str(aci)], check=True)
    manifest = json.loads(
        subprocess.run(["actool", "cat-manifest", str(aci)], capture_output=True, check=True).stdout
    )
    assert manifest["app"]["exec"] == ["/bin/sh"]  # the Docker image's Cmd
    assert {"name": "BASE_VAR", "value": "from-base"} in manifest["app"]["environment"]
    back = project / "back"
    to_docker = dualbuild(
        ["convert", str(aci), "--format", "docker", "--out", str(back), "--version", "2.0"], cli_env
    )
    assert to_docker.returncode == 0, to_docker.stderr
    docker("load", "-i", str(back / "busybox-2.0-linux-amd64.docker.tar"))
    ran = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "example.com/converted/busybox:2.0",
        "/bin/sh",
        "-c",
        "echo $BASE_VAR",
    )
    assert ran.stdout == "from-base\n"
    inspected = docker(
        "image", "inspect", "--format", "{{json .Config.Cmd}}", "example.com/converted/busybox:2.0"
    )
    assert json.loads(inspected.stdout) == ["/bin/sh"]  # Cmd survived Docker → ACI → Docker
