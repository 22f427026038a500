#!/usr/bin/env python3
"""Layered images and the step cache (issue 18), on two realistic shapes.

Each shape is a Debian minbase rootfs (made once with mmdebstrap, cached in --cache-dir) and
two stages of 5-8 steps, some of them run steps that fetch from the Debian mirror or PyPI:

  static-site  stage "server": apt-get install nginx, the server config, nginx -t;
               stage "final": a 300-page site copied in, an index written
  flask-app    stage "deps": apt-get install python3-venv, a venv, pip install flask;
               stage "final": the app copied in, compileall, a log folder

Measured per shape, each cold build in a fresh buildah store and cache (benchenv.sandbox):

  * the first build with the cache on, against a --no-cache build (both keep their trees);
  * the store's size after it (what the cache costs on disk), against the Docker tarball's;
  * an unchanged rebuild (the up-to-date check) and a rebuild into a new --out (every step
    from the cache, the artifacts written again), against the cold build;
  * one copied file edited: which steps run again;
  * the registry: 1.0.0 pushed (skopeo copy, as dualbuild publish pushes, to a private
    docker-registry on 127.0.0.1),
    one file of the last stage changed, 1.0.1 pushed; how much the blob store grew, against
    the one changed layer's compressed size, and how many blobs skopeo skipped.

A TLS-intercepting proxy's CA ($PIP_CERT, when set) reaches pip as a build secret, never a layer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchenv import BENCH, dualbuild_cli, log, require_tools, run_child, sandbox

SHAPES = ("static-site", "flask-app")
MIRROR = "http://deb.debian.org/debian"

STATIC_SITE = """\
[image]
name = "bench.example/static-site"
version = "{version}"

[[stages]]
name = "server"
from = "rootfs:minbase.tar"

  [[stages.steps]]
  run = "apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists"

  [[stages.steps]]
  write = "/etc/nginx/sites-available/default"
  content = "server {{ listen 8080; root /srv/www; }}\\n"

  [[stages.steps]]
  run = "nginx -t"

[[stages]]
name = "final"
from = "stage:server"

  [[stages.steps]]
  copy = ["site/"]
  to = "/srv/www/"

  [[stages.steps]]
  write = "/srv/www/index.html"
  content = "<h1>bench</h1>\\n"

  [[stages.steps]]
  mkdir = "/var/log/site"

[app]
entrypoint = ["/usr/sbin/nginx", "-g", "daemon off;"]

[output]
formats = ["docker", "aci"]
"""

FLASK_APP = """\
[image]
name = "bench.example/flask-app"
version = "{version}"

[[stages]]
name = "deps"
from = "rootfs:minbase.tar"

  [[stages.steps]]
  run = "apt-get update && apt-get install -y --no-install-recommends python3-venv"

  [[stages.steps]]
  run = "python3 -m venv /opt/venv"

  [[stages.steps]]
  copy = ["requirements.txt"]
  to = "/app/"

  [[stages.steps]]
  run = "/opt/venv/bin/pip install --no-cache-dir -r /app/requirements.txt"
  {pip_secret}

[[stages]]
name = "final"
from = "stage:deps"

  [[stages.steps]]
  copy = ["app/"]
  to = "/app/"

  [[stages.steps]]
  write = "/app/config.py"
  content = "DEBUG = False\\n"

  [[stages.steps]]
  run = "/opt/venv/bin/python -m compileall -q /app"

  [[stages.steps]]
  mkdir = "/var/log/app"

[app]
entrypoint = ["/opt/venv/bin/flask", "--app", "/app/main.py", "run", "--host", "0.0.0.0"]

[output]
formats = ["docker", "aci"]
"""

PIP_SECRET = 'secrets = [{ id = "pipca", src = "pip-ca.crt" }]\n  env = { PIP_CERT = "/run/secrets/pipca" }'


def main() -> None:
    args = _parse_args()
    require_tools("buildah", "mmdebstrap", "skopeo", "docker-registry", "gpg")
    cache = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    minbase = _minbase(cache)
    results: dict[str, object] = {"runs": args.runs, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="dbl-", dir="/var/tmp") as work:
        for shape in args.shapes.split(","):
            log(f"== {shape}")
            project = _project(Path(work) / shape, shape, minbase)
            results["shapes"][shape] = _measure_shape(project, args.runs)  # type: ignore[index]
            if shape == args.registry_shape:
                results["registry"] = _measure_registry(project, Path(work) / "registry")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(_markdown(results))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma list of: %(default)s")
    parser.add_argument("--runs", type=int, default=1, help="cold builds of each kind per shape (default: 1)")
    parser.add_argument("--registry-shape", default="static-site", help="the shape pushed twice")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "dualbuild-bench",
        help="minbase.tar lives here",
    )
    stamp = time.strftime("%Y-%m-%d")
    parser.add_argument(
        "--results", type=Path, default=BENCH / "results" / f"{stamp}-{os.cpu_count()}cpu-layers.json"
    )
    return parser.parse_args()


def _minbase(cache: Path) -> Path:
    tarball = cache / "minbase.tar"
    if not tarball.exists():
        log("making minbase.tar with mmdebstrap (once)")
        partial = cache / "minbase.tar.partial.tar"
        run_child(["mmdebstrap", "--variant=minbase", "bookworm", str(partial), MIRROR], timeout=1800)
        partial.rename(tarball)
    return tarball


def _project(directory: Path, shape: str, minbase: Path) -> Path:
    directory.mkdir(parents=True)
    if minbase.stat().st_dev == directory.stat().st_dev:
        os.link(minbase, directory / "minbase.tar")
    else:
        shutil.copy(minbase, directory / "minbase.tar")
    if shape == "static-site":
        site = directory / "site"
        for number in range(300):
            page = site / f"section-{number % 10}" / f"page-{number}.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(f"<h1>Page {number}</h1>\n" + "<p>Lorem ipsum dolor sit amet.</p>\n" * 40)
        text = STATIC_SITE
    else:
        (directory / "requirements.txt").write_text("flask==3.0.3\n")
        (directory / "app").mkdir()
        (directory / "app" / "main.py").write_text(
            'from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route("/")\ndef index() -> str:\n'
            '    return "hello\\n"\n'
        )
        certificate = os.environ.get("PIP_CERT")
        if certificate:
            shutil.copy(certificate, directory / "pip-ca.crt")
        text = FLASK_APP.replace("{pip_secret}", PIP_SECRET if certificate else "")
    (directory / "recipe.template").write_text(text)
    _write_recipe(directory, "1.0.0")
    return directory


def _write_recipe(project: Path, version: str) -> Path:
    recipe = project / "recipe.toml"
    recipe.write_text(
        (project / "recipe.template")
        .read_text()
        .replace("{version}", version)
        .replace("{{", "{")
        .replace("}}", "}")
    )
    return recipe


def _edited_file(project: Path) -> Path:
    site = project / "site" / "section-3" / "page-3.html"
    return site if site.exists() else project / "app" / "main.py"


def _edit(path: Path, original: bytes, mark: str) -> None:
    """One changed file, still valid for its language (compileall runs over the app)."""
    path.write_bytes(original + (f"# {mark}\n" if path.suffix == ".py" else f"<!-- {mark} -->\n").encode())


def _build(env: dict[str, str], project: Path, out: Path, *extra: str) -> tuple[float, str]:
    child = run_child(
        [dualbuild_cli(), "build", str(project / "recipe.toml"), "--out", str(out), *extra],
        env=env,
        timeout=3600,
    )
    return child.seconds, child.stderr


def _store_bytes(root: Path) -> int:
    """Bytes the buildah store holds (every cached tree), each file once."""
    found = subprocess.run(
        ["du", "-sb", "--one-file-system", str(root)], capture_output=True, text=True, check=True
    )
    return int(found.stdout.split()[0])


def _measure_shape(project: Path, runs: int) -> dict[str, object]:
    rows: dict[str, list[float]] = {
        key: []
        for key in (
            "cold_cache",
            "cold_no_cache",
            "cache_bytes",
            "image_bytes",
            "up_to_date",
            "new_out",
            "edit",
        )
    }
    edit_reran: list[str] = []
    for _ in range(runs):
        with sandbox() as box:
            seconds, _ = _build(box.env(), project, box.base / "out", "--no-cache")
            rows["cold_no_cache"].append(seconds)
        with sandbox() as box:
            env, out = box.env(), box.base / "out"
            seconds, _ = _build(env, project, out)
            rows["cold_cache"].append(seconds)
            rows["image_bytes"].append(next(out.glob("*.docker.tar")).stat().st_size)
            rows["cache_bytes"].append(_store_bytes(box.base / "root"))
            rows["up_to_date"].append(_build(env, project, out)[0])
            rows["new_out"].append(_build(env, project, box.base / "out2")[0])
            edited = _edited_file(project)
            original = edited.read_bytes()
            try:
                _edit(edited, original, "edited")
                seconds, stderr = _build(env, project, out)
            finally:
                edited.write_bytes(original)
            rows["edit"].append(seconds)
            edit_reran = [
                line.split("] ", 1)[1].split("  [run")[0] for line in stderr.splitlines() if "  [run:" in line
            ]
    medians = {key: statistics.median(values) for key, values in rows.items()}
    return {
        "medians": medians,
        "runs": rows,
        "cold_cache_over_no_cache": medians["cold_cache"] / medians["cold_no_cache"],
        "cache_over_image": medians["cache_bytes"] / medians["image_bytes"],
        "up_to_date_over_cold": medians["up_to_date"] / medians["cold_cache"],
        "new_out_over_cold": medians["new_out"] / medians["cold_cache"],
        "edit_reran": edit_reran,
    }


def _measure_registry(project: Path, base: Path) -> dict[str, object]:
    base.mkdir()
    storage = base / "storage"
    port = _free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: bench\n"
    )
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(port)
        repository = f"127.0.0.1:{port}/bench/{project.name}"
        with sandbox() as box:
            env = box.env()
            sizes, skipped, layers = [], [], []
            held: dict[str, int] = {}
            for version, change in (("1.0.0", False), ("1.0.1", True)):
                edited = _edited_file(project)
                original = edited.read_bytes()
                try:
                    if change:
                        _edit(edited, original, "1.0.1")
                    _write_recipe(project, version)
                    _build(env, project, box.base / version)
                finally:
                    edited.write_bytes(original)
                    _write_recipe(project, "1.0.0")
                report = next((box.base / version).glob("*.docker.tar"))
                run_child(
                    [
                        "skopeo",
                        "copy",
                        "--dest-tls-verify=false",
                        f"docker-archive:{report}",
                        f"docker://{repository}:{version}",
                    ],
                    env=env,
                )
                before = set(held)
                held = _blobs(storage)
                sizes.append(sum(held.values()))
                raw = run_child(
                    ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{repository}:{version}"]
                )
                described = json.loads(raw.stdout)["layers"]
                layers.append([layer["size"] for layer in described])
                # A layer whose blob the registry held before this push was not uploaded again.
                skipped.append(sum(1 for layer in described if layer["digest"] in before))
    finally:
        registry.terminate()
        registry.wait(timeout=60)
    changed = [size for size, before in zip(layers[1], layers[0], strict=False) if size != before]
    growth = sizes[1] - sizes[0]
    return {
        "blobs_after_1_0_0": sizes[0],
        "blobs_after_1_0_1": sizes[1],
        "growth": growth,
        "changed_layer_compressed": layers[1][-1],
        # What grew besides the changed layer: the new config and manifest.
        "growth_besides_the_layer": growth - sum(changed),
        "growth_over_changed_layer": growth / layers[1][-1],
        "layers": len(layers[1]),
        "blobs_skipped_on_1_0_1": skipped[1],
        "changed_layers": len(changed),
    }


def _blobs(storage: Path) -> dict[str, int]:
    """The registry's blobs: digest → size (the data files, not the folders around them)."""
    root = storage / "docker" / "registry" / "v2" / "blobs"
    return {f"sha256:{data.parent.name}": data.stat().st_size for data in root.glob("sha256/*/*/data")}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("docker-registry did not start")


def _markdown(results: dict[str, object]) -> str:
    lines = [
        "| shape | cold, cache on | cold, --no-cache | ratio | cache / image | up to date / cold"
        " | new --out / cold | one file edited: steps run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, found in results["shapes"].items():  # type: ignore[attr-defined]
        medians = found["medians"]
        lines.append(
            f"| {shape} | {medians['cold_cache']:.1f} s | {medians['cold_no_cache']:.1f} s | "
            f"{found['cold_cache_over_no_cache']:.2f} | {medians['cache_bytes'] / 1e6:.0f} MB / "
            f"{medians['image_bytes'] / 1e6:.0f} MB = {found['cache_over_image']:.2f} | "
            f"{found['up_to_date_over_cold']:.3f} | {found['new_out_over_cold']:.2f} |"
            f" {len(found['edit_reran'])} |"
        )
    registry = results.get("registry")
    if isinstance(registry, dict):
        lines += [
            "",
            "| registry | after 1.0.0 | after 1.0.1 | growth | changed layer (gzip) | config + manifest"
            " | growth / layer | layers not uploaded again |",
            "|---|---|---|---|---|---|---|---|",
            f"| blob store | {registry['blobs_after_1_0_0'] / 1e6:.1f} MB"
            f" | {registry['blobs_after_1_0_1'] / 1e6:.1f} MB | {registry['growth'] / 1e3:.1f} kB"
            f" | {registry['changed_layer_compressed'] / 1e3:.1f} kB"
            f" | {registry['growth_besides_the_layer'] / 1e3:.1f} kB"
            f" | {registry['growth_over_changed_layer']:.2f}"
            f" | {registry['blobs_skipped_on_1_0_1']} of {registry['layers']} layers |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
