#!/usr/bin/env python3
"""dualbuild benchmarks: both formats for the price of one (issue 8) and rebuild speed (issue 7).

Measurements (pick with --measure; each is run --runs times, alternating with its reference):

  a        full job: `dualbuild build --no-cache` of recipe {from = "rootfs:minbase.tar", one
           write step} → Docker tarball + signed ACI, vs bench/existing-tools.sh (buildah
           from/add/commit/push docker-archive, actool build on a copy, gpg --detach-sign) and,
           given docker2aci (--docker2aci), vs bench/seed-pipeline.sh, the seed's way (issue 19):
           DOCKER_BUILDKIT=0 docker build --no-cache + docker save + docker2aci + gpg, against
           a private dockerd
  b        export phase (tree walk + emitters + signature, dualbuild's API in a child process)
           vs `tar -c | pigz -p2 >/dev/null` of the same tree: this machine's I/O + gzip floor
  c        Docker only vs Docker + ACI + signature: the price of the second format
  d        peak RSS of the export child (wait4 ru_maxrss), per tree
  e        export time growth from files10k to files100k
  convert  `dualbuild convert` of the (a) tree's Docker tarball (built once, docker only) to a
           signed ACI vs `docker2aci` + `gpg --detach-sign` of the same tarball (issue 19,
           bench/convert.py); skipped without a docker2aci (--docker2aci)
  rebuild  cold build (cache pruned) vs unchanged rebuild vs rebuild after deleting the
           artifacts (every step cached, emit re-run); --no-cache cold builds come from (a)

Trees (--trees): minbase (mmdebstrap, cached as minbase.tar), files10k, files100k, big2g.
Generated trees and tarballs are cached in --cache-dir; a rerun only measures. Results go to
--results (JSON) and --markdown (the tables of BENCHMARKS.md).

Everything runs against a private buildah store (CONTAINERS_STORAGE_CONF) and a throwaway
GNUPGHOME with an RSA key, both removed at the end. Needs root, buildah, gpg, pigz, actool,
mmdebstrap (unless --minbase-tar seeds the cache); for the seed column also docker, dockerd and
docker2aci (a binary, or its source checkout built with go into --cache-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import convert
import report
import seed
import trees
from benchenv import (
    BENCH,
    ROOT,
    ChildResult,
    Sandbox,
    drop_caches,
    dualbuild_cli,
    log,
    machine,
    python,
    require_tools,
    run_child,
    sandbox,
    shell_seconds,
)

MEASURES = ("a", "b", "c", "d", "e", "convert", "rebuild")
RECIPE = """\
# Benchmark (a): a Debian minbase rootfs plus one write step → Docker tarball + signed ACI.
[image]
name = "example.com/bench/minbase"
version = "1.0.0"

[[stages]]
name = "final"
from = "rootfs:minbase.tar"

  [[stages.steps]]
  write = "/etc/bench-marker"
  content = "built by the dualbuild benchmark\\n"

[output]
formats = ["docker", "aci"]
source_date_epoch = 1700000000
"""


def main() -> None:
    args = _parse_args()
    if os.geteuid() != 0:
        sys.exit("the benchmarks need root (buildah, device nodes in the minbase tree)")
    require_tools("buildah", "gpg", "gpgconf", "pigz", "tar", "actool", "awk")
    measures = _split(args.measure, MEASURES)
    tree_names = _split(args.trees, trees.TREE_NAMES)
    if "e" in measures:
        tree_names = sorted({*tree_names, "files10k", "files100k"}, key=trees.TREE_NAMES.index)
    cache = args.cache_dir.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    results: dict[str, object] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "runs": args.runs,
        "cold_page_cache": args.cold_page_cache,
        "command": " ".join(sys.argv),
        "dualbuild_source": source_fingerprint(),
    }
    needs_exports = bool({"b", "c", "d", "e"} & set(measures))
    roots = {}
    if needs_exports:
        roots = {name: trees.ensure_tree(cache, name, minbase_seed=args.minbase_tar) for name in tree_names}
        results["trees"] = {name: trees.tree_facts(cache, name) for name in tree_names}
    tarball = None
    if {"a", "convert", "rebuild"} & set(measures):
        tarball = trees.ensure_minbase_tar(cache, seed=args.minbase_tar)
        results["minbase_tar"] = {"path": str(tarball), "bytes": tarball.stat().st_size}

    docker2aci = None
    if {"a", "convert"} & set(measures):
        docker2aci = _docker2aci(args, cache, dockerd="a" in measures)
        if docker2aci is None and "a" in measures:
            log(seed.LEFT_OUT)
            results["seed_pipeline"] = seed.LEFT_OUT
        if docker2aci is None and "convert" in measures:
            log(convert.LEFT_OUT)
            results["convert_skipped"] = convert.LEFT_OUT

    bench = Bench(args=args, work=work)
    try:
        with sandbox() as box, contextlib.ExitStack() as daemons:
            bench.box = box
            if tarball is not None:
                project = bench.project(tarball)
            if "a" in measures:
                pipeline = None
                if docker2aci is not None and tarball is not None:
                    dockerd = daemons.enter_context(seed.private_dockerd())
                    pipeline = seed.SeedPipeline(docker2aci=docker2aci, dockerd=dockerd, work=work,
                                                 tarball=tarball)  # fmt: skip
                results["full_job"] = bench.full_job(project, pipeline)
            if "convert" in measures and docker2aci is not None:
                source = convert.source_tarball(project, work / "convert-source", box)
                results["convert"] = convert.convert_job(
                    tarball=source, docker2aci=docker2aci, box=box, work=work, runs=args.runs,
                    warmup=args.warmup, before_run=bench.before_run,
                )  # fmt: skip
            if needs_exports:
                results["exports"] = {name: bench.exports(name, root) for name, root in roots.items()}
            if "rebuild" in measures:
                results["rebuild"] = bench.rebuild(project)
            if args.profile:
                results["profiles"] = bench.profiles(roots, project if tarball is not None else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    results["dualbuild_source_at_end"] = source_fingerprint()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results: {args.results}")
    text = report.render(results)
    if args.markdown is not None:
        args.markdown.write_text(text)
        log(f"tables: {args.markdown}")
    sys.stdout.write(text)


def _parse_args() -> argparse.Namespace:
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "dualbuild-bench"
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--measure", default=",".join(MEASURES), help="comma list of: %(default)s")
    parser.add_argument(
        "--trees", default="minbase,files100k,big2g", help="comma list for b/c/d (default: %(default)s)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default: 3)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed first runs per side, (a) and convert (default: 1)"
    )
    parser.add_argument("--cache-dir", type=Path, default=default_cache, help="default: %(default)s")
    parser.add_argument("--minbase-tar", type=Path, help="seed the cache with this minbase tarball")
    parser.add_argument(
        "--results", type=Path, help="results JSON (default: CACHE/results/latest.json)", default=None
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--cold-page-cache", action="store_true", help="drop the page cache before every timed run"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also sample one export per tree and one build with py-spy"
    )
    parser.add_argument(
        "--docker2aci", type=Path, help=f"docker2aci binary or source checkout for (a)'s seed column and "
        f"for convert (default: ${seed.ENV_VAR}; without either both are left out)",
    )  # fmt: skip
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy binary")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.results is None:
        args.results = args.cache_dir.expanduser() / "results" / "latest.json"
    return args


def _docker2aci(args: argparse.Namespace, cache: Path, *, dockerd: bool) -> Path | None:
    given = seed.given_docker2aci(args.docker2aci)
    if given is None:
        return None
    if dockerd:
        require_tools("docker", "dockerd")
    return seed.ensure_docker2aci(given, cache)


def _split(value: str, known: tuple[str, ...]) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown: {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def source_fingerprint() -> dict[str, object]:
    """Which dualbuild was measured: git HEAD, a hash of every source file, the gzip backend."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "dualbuild").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "dualbuild"],
                           capture_output=True, text=True, check=False).stdout.splitlines()  # fmt: skip
    tarwriter = (ROOT / "dualbuild" / "layer" / "tarwriter.py").read_text()
    return {
        "git_head": head,
        "uncommitted_files": len(dirty),
        "sources_sha256": digest.hexdigest()[:16],
        "gzip": "isal" if "isal" in tarwriter else "zlib",
    }


def summary(values: list[float]) -> dict[str, object]:
    """Median, min, max and every run."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 3) for v in values],
    }


class Bench:
    """The measurements, sharing one sandbox and one scratch directory."""

    box: Sandbox

    def __init__(self, *, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.runs: int = args.runs

    def before_run(self) -> None:
        # Untimed: write back what earlier runs left dirty, so no run pays for another's writes.
        os.sync()
        if self.args.cold_page_cache:
            drop_caches()

    # --- (a) -----------------------------------------------------------------------------------

    def project(self, tarball: Path) -> Path:
        """A build context holding the (a) recipe and the minbase tarball (hardlinked)."""
        project = self.work / "project"
        project.mkdir()
        (project / "recipe.toml").write_text(RECIPE)
        try:
            os.link(tarball, project / "minbase.tar")
        except OSError:
            shutil.copyfile(tarball, project / "minbase.tar")
        return project

    def dualbuild(self, project: Path, out: Path, *extra: str) -> tuple[ChildResult, dict[str, object]]:
        """One `dualbuild build --json` in the sandbox; returns the run and its report."""
        self.before_run()
        result = run_child(
            [dualbuild_cli(), "-v", "build", str(project / "recipe.toml"), "--out", str(out), "--json",
             *extra],
            env=self.box.env(),
        )  # fmt: skip
        return result, json.loads(result.stdout)

    def full_job(self, project: Path, pipeline: seed.SeedPipeline | None = None) -> dict[str, object]:
        """(a): dualbuild build --no-cache vs bench/existing-tools.sh [and the seed pipeline], in turn."""
        sides = ["dualbuild", "existing", *(["seed"] if pipeline is not None else [])]
        seconds: dict[str, list[float]] = {side: [] for side in sides}
        phases: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        sizes: dict[str, object] = {}
        script = str(BENCH / "existing-tools.sh")
        tarball = str(project / "minbase.tar")

        def one(side: str, out: Path) -> ChildResult:
            if side == "dualbuild":
                result, built = self.dualbuild(project, out, "--no-cache")
                phases[side].append(build_phases(built, result.seconds))
                sizes[side] = {k: v["size"] for k, v in built["artifacts"].items()}  # type: ignore[attr-defined]
                return result
            self.before_run()
            if side == "existing":
                result = run_child(
                    ["bash", script, tarball, str(out), self.box.fingerprint], env=self.box.env()
                )
            else:
                assert pipeline is not None
                result = pipeline.run(out, key=self.box.fingerprint, env=self.box.env())
            found = _phases(result.stderr)
            found["other"] = result.seconds - sum(found.values())
            phases[side].append(found)
            sizes[side] = {p.name: p.stat().st_size for p in out.iterdir()}
            return result

        for run in range(self.args.warmup):
            log(f"(a) warm-up {run + 1}/{self.args.warmup} (untimed): first use of the store and files")
            for side in sides:
                one(side, self.work / f"a-warmup-{side}")
                shutil.rmtree(self.work / f"a-warmup-{side}")
        for side in sides:
            phases[side].clear()
        for run in range(self.runs):
            for side in sides[run % len(sides) :] + sides[: run % len(sides)]:
                out = self.work / f"a-{side}-{run}"
                result = one(side, out)
                seconds[side].append(result.seconds)
                log(f"(a) run {run + 1}/{self.runs} {side}: {result.seconds:.2f}s")
                shutil.rmtree(out, ignore_errors=True)
        ours = statistics.median(seconds["dualbuild"])
        found: dict[str, object] = {
            "dualbuild": summary(seconds["dualbuild"]),
            "existing": summary(seconds["existing"]),
            "ratio": ours / statistics.median(seconds["existing"]),
            "dualbuild_phases": _median_phases(phases["dualbuild"]),
            "existing_phases": _median_phases(phases["existing"]),
            "sizes": sizes,
        }
        if pipeline is not None:
            found["seed"] = summary(seconds["seed"])
            found["ratio_seed"] = ours / statistics.median(seconds["seed"])
            found["seed_phases"] = _median_phases(phases["seed"])
            found["seed_tools"] = pipeline.facts()
        return found

    # --- (b) (c) (d) (e) -----------------------------------------------------------------------

    def export(self, root: Path, formats: str, *, sign: bool) -> tuple[ChildResult, dict[str, object]]:
        """One export (tree walk + emitters [+ signature]) of ``root`` in a child process."""
        self.before_run()
        out = self.work / "export"
        argv = [python(), str(BENCH / "export_child.py"), str(root), str(out), "--formats", formats]
        if sign:
            argv += ["--sign-key", self.box.fingerprint]
        result = run_child(argv, env=self.box.env())
        shutil.rmtree(out, ignore_errors=True)
        return result, json.loads(result.stdout)

    def floor(self, root: Path, *, level: int = 6) -> ChildResult:
        """`tar -c | pigz -p2 >/dev/null` of the tree: read every byte, gzip it on both cores.

        pigz's default level is 6; level 1 is a stricter floor for dualbuild's ISA-L level 2.
        """
        self.before_run()
        pipeline = f"tar -C {_quote(root)} -cf - . | pigz -p2 -{level} >/dev/null"
        return run_child(["bash", "-o", "pipefail", "-c", pipeline])

    def exports(self, name: str, root: Path) -> dict[str, object]:
        """(b), (c), (d) for one tree: floor, Docker only, Docker + ACI + signature, rounds alternating."""
        log(f"tree {name}: warming the page cache")
        # Through cat: GNU tar does not even read the files when its archive is /dev/null.
        shell_seconds(f"tar -C {_quote(root)} -cf - . | cat >/dev/null")
        kinds: dict[str, Callable[[], tuple[float, dict[str, object] | None, ChildResult | None]]] = {
            "floor": lambda: _floor_seconds(self.floor(root)),
            "floor_fast": lambda: _floor_seconds(self.floor(root, level=1)),
            "docker": lambda: _export_seconds(*self.export(root, "docker", sign=False)),
            "full": lambda: _export_seconds(*self.export(root, "docker,aci", sign=True)),
        }
        seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
        details: dict[str, list[dict[str, object]]] = {"docker": [], "full": []}
        rss: dict[str, list[int]] = {"docker": [], "full": []}
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        order = list(kinds)
        for run in range(self.runs):
            for kind in order[run % len(order) :] + order[: run % len(order)]:
                value, detail, child = kinds[kind]()
                seconds[kind].append(value)
                if child is not None:
                    cpu[kind].append(child.user + child.system)
                if detail is not None and child is not None:
                    details[kind].append(detail)
                    rss[kind].append(child.max_rss_kib)
                log(f"tree {name} run {run + 1}/{self.runs} {kind}: {value:.2f}s")
        return {
            "floor": summary(seconds["floor"]),
            "floor_fast": summary(seconds["floor_fast"]),
            "docker": summary(seconds["docker"]),
            "full": summary(seconds["full"]),
            "ratio_export_vs_floor": statistics.median(seconds["full"]) / statistics.median(seconds["floor"]),
            "ratio_full_vs_docker": statistics.median(seconds["full"]) / statistics.median(seconds["docker"]),
            "full_phases": _median_phases([_flat(d) for d in details["full"]]),
            "docker_phases": _median_phases([_flat(d) for d in details["docker"]]),
            "peak_rss_mib": {kind: max(values) / 1024 for kind, values in rss.items()},
            "cpu_seconds": {kind: statistics.median(values) for kind, values in cpu.items() if values},
            # Rounds before the fifth: from the export child; the tree facts (bench/trees.py) have them.
            "entries": details["full"][0].get("entries") if details["full"] else None,
            "artifacts": details["full"][0]["artifacts"] if details["full"] else None,
            "rss_detail_kib": details["full"][-1]["rss_kib"] if details["full"] else None,
        }

    # --- issue 7: rebuilds ---------------------------------------------------------------------

    def rebuild(self, project: Path) -> dict[str, object]:
        """Cold (cache pruned) vs unchanged rebuild vs rebuild with the artifacts deleted."""
        seconds: dict[str, list[float]] = {"cold": [], "unchanged": [], "artifacts_deleted": []}
        phases: dict[str, list[dict[str, float]]] = {"cold": [], "artifacts_deleted": []}
        out = self.work / "rebuild-dist"
        for run in range(self.runs):
            run_child([dualbuild_cli(), "cache", "prune"], env=self.box.env())
            shutil.rmtree(out, ignore_errors=True)
            for kind in seconds:
                if kind == "artifacts_deleted":
                    shutil.rmtree(out)
                result, built = self.dualbuild(project, out)
                seconds[kind].append(result.seconds)
                if kind in phases:
                    phases[kind].append(build_phases(built, result.seconds))
                elif "up to date" not in result.stderr:
                    raise RuntimeError(f"the unchanged rebuild was not up to date:\n{result.stderr}")
                log(f"rebuild run {run + 1}/{self.runs} {kind}: {result.seconds:.2f}s")
        run_child([dualbuild_cli(), "cache", "prune"], env=self.box.env())
        shutil.rmtree(out, ignore_errors=True)
        cold = statistics.median(seconds["cold"])
        return {
            **{kind: summary(values) for kind, values in seconds.items()},
            "ratio_unchanged_vs_cold": statistics.median(seconds["unchanged"]) / cold,
            "ratio_artifacts_deleted_vs_cold": statistics.median(seconds["artifacts_deleted"]) / cold,
            "phases": {kind: _median_phases(values) for kind, values in phases.items()},
        }

    # --- profiles ------------------------------------------------------------------------------

    def profiles(self, roots: dict[str, Path], project: Path | None) -> dict[str, object]:
        """py-spy samples (all threads, native frames off) of one export per tree and one build."""
        import profile_summary

        found: dict[str, object] = {}
        directory = self.args.cache_dir.expanduser() / "profiles"
        directory.mkdir(parents=True, exist_ok=True)
        targets: dict[str, list[str]] = {}
        for name, root in roots.items():
            targets[f"export-{name}"] = [
                python(), str(BENCH / "export_child.py"), str(root), str(self.work / "profile-out"),
                "--formats", "docker,aci", "--sign-key", self.box.fingerprint,
            ]  # fmt: skip
        if project is not None:
            targets["build-minbase"] = [
                dualbuild_cli(), "build", str(project / "recipe.toml"), "--no-cache",
                "--out", str(self.work / "profile-dist"),
            ]  # fmt: skip
        for name, argv in targets.items():
            raw = directory / f"{name}.txt"
            run_child(
                [self.args.py_spy, "record", "--format", "raw", "--rate", "200", "--idle", "--threads",
                 "--output", str(raw), "--", *argv],
                env=self.box.env(),
            )  # fmt: skip
            shutil.rmtree(self.work / "profile-out", ignore_errors=True)
            shutil.rmtree(self.work / "profile-dist", ignore_errors=True)
            found[name] = {"raw": str(raw), **profile_summary.summarize(raw)}
            log(f"profile {name}: {raw}")
        return found


def _floor_seconds(child: ChildResult) -> tuple[float, None, ChildResult]:
    return child.seconds, None, child


def _export_seconds(
    child: ChildResult, detail: dict[str, object]
) -> tuple[float, dict[str, object], ChildResult]:
    timings = detail["timings"]
    assert isinstance(timings, dict)
    return float(timings["export"]), detail, child


def _flat(detail: dict[str, object]) -> dict[str, float]:
    timings = dict(detail["timings"])  # type: ignore[call-overload]
    for name, seconds in dict(detail["emitters"]).items():  # type: ignore[call-overload]
        timings[f"emit_{name}"] = seconds
    return timings


def _phases(stderr: str) -> dict[str, float]:
    phases: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "phase":
            phases[parts[1]] = float(parts[2])
    return phases


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    names = {name for run in runs for name in run}
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in sorted(names)}


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


# The build report's phases that follow each other; emit_<format> overlap inside "emit" and
# "total" is the build's own clock, so neither goes into the sum.
SEQUENTIAL_PHASES = ("stages", "snapshot", "emit", "sign")


def build_phases(report: dict[str, object], wall: float) -> dict[str, float]:
    """A build report's phase timings, with "other" = wall time - the sequential phases."""
    timings = report["timings"]
    assert isinstance(timings, dict)
    phases = {name: float(seconds) for name, seconds in timings.items() if name != "total"}
    phases["other"] = wall - sum(phases.get(name, 0.0) for name in SEQUENTIAL_PHASES)
    return phases


if __name__ == "__main__":
    main()
