"""Benchmark "convert" (issue 19): `dualbuild convert` of a Docker tarball vs docker2aci + gpg.

The source is the Docker image tarball of the (a) tree: `dualbuild build` of the (a) recipe with
formats ["docker"] and no signature, made once (untimed). Then, in turn, `dualbuild convert
TARBALL --format aci` signing with the bench's key, and `docker2aci TARBALL` followed by
`gpg --armor --detach-sign` of its ACI with the same key (bench/docker2aci-sign.sh).

dualbuild's tarball is also an OCI layout: its legacy ``<id>/layer.tar`` is a symlink into
blobs/, as `docker save` writes since Docker 25. docker2aci 0.17.2 reads that symlink as an empty
layer (a 548-byte ACI), so both sides convert the same tarball rewritten, untimed, into the
layout older `docker save` wrote: ``<id>/layer.tar`` a regular file, the config as ``<hex>.json``,
no blobs/.
"""

from __future__ import annotations

import io
import json
import posixpath
import shutil
import statistics
import tarfile
from collections.abc import Callable
from pathlib import Path

from benchenv import BENCH, ChildResult, Sandbox, dualbuild_cli, log, run_child

LEFT_OUT = "convert: no docker2aci given (--docker2aci or $DUALBUILD_BENCH_DOCKER2ACI); skipped"
NAME = "example.com/minbase"
VERSION = "1.0.0"
TARGET = 0.5


def docker_only(recipe: str) -> str:
    """The (a) recipe writing only the Docker tarball."""
    return recipe.replace('formats = ["docker", "aci"]', 'formats = ["docker"]')


def source_tarball(project: Path, out: Path, box: Sandbox) -> Path:
    """Build the (a) tree's Docker tarball once, unsigned, from a copy of the (a) recipe."""
    recipe = project / "recipe-docker.toml"
    recipe.write_text(docker_only((project / "recipe.toml").read_text()))
    run_child(
        [dualbuild_cli(), "build", str(recipe), "--context", str(project), "--out", str(out), "--no-sign",
         "--no-cache"],
        env=box.env(),
    )  # fmt: skip
    tarballs = sorted(out.glob("*.tar"))
    if len(tarballs) != 1:
        raise RuntimeError(f"expected one Docker tarball in {out}, found {[p.name for p in out.iterdir()]}")
    return legacy_layout(tarballs[0], out / "minbase-legacy.docker.tar")


def legacy_layout(source: Path, target: Path) -> Path:
    """``source`` (docker-archive + OCI layout, layer.tar a symlink) in the pre-25 `docker save` layout."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        manifest = json.loads(_read(old, "manifest.json"))
        config_hex = manifest[0]["Config"].rsplit("/", 1)[-1]
        # Each layer's blob path in the manifest, by the legacy <id>/layer.tar that links to it.
        legacy: dict[str, str] = {}
        for member in old.getmembers():
            name = member.name.removeprefix("./")
            if name.startswith("blobs") or name in ("index.json", "oci-layout", "manifest.json"):
                continue
            if member.issym() and name.endswith("/layer.tar"):
                blob = old.getmember(
                    posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                )
                regular = tarfile.TarInfo(name)
                regular.size, regular.mode, regular.mtime = blob.size, 0o644, member.mtime
                new.addfile(regular, old.extractfile(blob))
                legacy[blob.name.removeprefix("./")] = name
                continue
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        manifest[0]["Layers"] = [legacy[layer] for layer in manifest[0]["Layers"]]
        manifest[0]["Config"] = f"{config_hex}.json"
        _add(new, f"{config_hex}.json", _read(old, "blobs/sha256/" + config_hex))
        _add(new, "manifest.json", json.dumps(manifest).encode())
    source.unlink()
    return target


def _read(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    if member is None:
        raise RuntimeError(f"{name} in the Docker tarball is not a file")
    return member.read()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    archive.addfile(info, io.BytesIO(data))


def convert_job(
    *,
    tarball: Path,
    docker2aci: Path,
    box: Sandbox,
    work: Path,
    runs: int,
    warmup: int,
    before_run: Callable[[], None],
) -> dict[str, object]:
    """``runs`` runs of each side in turn (each round starts one place later), after ``warmup``
    untimed rounds; medians and the ratio dualbuild / docker2aci."""
    sides = ("dualbuild", "docker2aci")
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    sizes: dict[str, dict[str, int]] = {}
    phases: list[dict[str, float]] = []

    def one(side: str, out: Path) -> ChildResult:
        before_run()
        if side == "dualbuild":
            result = run_child(
                [dualbuild_cli(), "convert", str(tarball), "--name", NAME, "--version", VERSION,
                 "--format", "aci", "--sign-key", box.fingerprint, "--out", str(out), "--json"],
                env=box.env(),
            )  # fmt: skip
            json.loads(result.stdout)
        else:
            result = run_child(
                ["bash", str(BENCH / "docker2aci-sign.sh"), str(tarball), str(out), box.fingerprint,
                 str(docker2aci)],
                env=box.env(),
            )  # fmt: skip
            phases.append(_phases(result.stderr))
        found = {p.name: p.stat().st_size for p in out.iterdir() if not p.name.startswith(".")}
        if not any(n.endswith(".aci") for n in found) or not any(n.endswith(".aci.asc") for n in found):
            raise RuntimeError(f"{side} wrote no signed ACI: {sorted(found)}")
        sizes[side] = found
        return result

    for run in range(-warmup, runs):
        for side in sides[run % 2 :] + sides[: run % 2]:
            out = work / f"convert-{side}-{run}"
            out.mkdir()
            result = one(side, out)
            shutil.rmtree(out, ignore_errors=True)
            if run < 0:
                log(f"(convert) warm-up {run + warmup + 1}/{warmup} {side} (untimed): {result.seconds:.2f}s")
                continue
            seconds[side].append(result.seconds)
            log(f"(convert) run {run + 1}/{runs} {side}: {result.seconds:.2f}s")
    phases[:] = phases[warmup:]
    ours = statistics.median(seconds["dualbuild"])
    theirs = statistics.median(seconds["docker2aci"])
    return {
        "source": {"path": tarball.name, "bytes": tarball.stat().st_size},
        "dualbuild": _summary(seconds["dualbuild"]),
        "docker2aci": _summary(seconds["docker2aci"]),
        "ratio": ours / theirs,
        "target": TARGET,
        "docker2aci_phases": {
            name: statistics.median(run.get(name, 0.0) for run in phases)
            for name in sorted({name for run in phases for name in run})
        },
        "sizes": sizes,
        "docker2aci_path": str(docker2aci),
    }


def _summary(values: list[float]) -> dict[str, object]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 3) for v in values],
    }


def _phases(stderr: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "phase":
            found[parts[1]] = float(parts[2])
    return found
