"""Markdown tables from a bench/run.py results file (what BENCHMARKS.md quotes).

usage: report.py RESULTS.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TARGETS = {
    "a": ("full job vs existing tools", 0.35),
    "b": ("export vs tar|pigz -p2 floor", 1.0),
    "c": ("Docker+ACI+sig vs Docker only", 1.15),
    "e": ("export time 100k / 10k files", 11.0),
    "convert": ("`dualbuild convert` vs docker2aci + gpg (minbase)", 0.5),
}
RSS_TARGET_MIB = 150.0


def _s(value: float) -> str:
    return f"{value:.2f} s"


def _runs(summary: Mapping[str, Any]) -> str:
    return f"{_s(summary['median'])} ({', '.join(f'{v:.2f}' for v in summary['runs'])})"


def _verdict(ratio: float, target: float) -> str:
    if ratio <= target:
        return f"**met** ({ratio / target:.0%} of the limit)"
    return f"**not met**: {ratio / target:.1f}× over the limit ({ratio:.2f} vs ≤ {target})"


def render(results: Mapping[str, Any]) -> str:
    """All tables, in BENCHMARKS.md order."""
    out: list[str] = []
    out += _machine(results)
    out += _targets(results)
    if "full_job" in results:
        out += _full_job(results["full_job"], results.get("seed_pipeline"))
    if "convert" in results or "convert_skipped" in results:
        out += _convert(results.get("convert"), results.get("convert_skipped"))
    if "exports" in results:
        out += _exports(results["exports"], results.get("trees", {}))
    if "rebuild" in results:
        out += _rebuild(results["rebuild"], results.get("full_job"))
    if "profiles" in results:
        out += _profiles(results["profiles"])
    return "\n".join(out) + "\n"


def _machine(results: Mapping[str, Any]) -> list[str]:
    m = results["machine"]
    tools = "; ".join(f"{k}: {v}" for k, v in m.get("tools", {}).items())
    cache = "dropped before every run" if results.get("cold_page_cache") else "warm (trees read once first)"
    return [
        f"Measured {results['started']} → {results.get('finished', '?')}, {results['runs']} runs each "
        f"(median, then every run in order), page cache {cache}.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}. {tools}.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]


def _targets(results: Mapping[str, Any]) -> list[str]:
    rows = [
        "| | measure | dualbuild | reference | ratio | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    full = results.get("full_job")
    if full:
        rows.append(
            f"| (a) | {TARGETS['a'][0]} (minbase) | {_s(full['dualbuild']['median'])} | "
            f"{_s(full['existing']['median'])} | {full['ratio']:.2f} | ≤ {TARGETS['a'][1]} | "
            f"{_verdict(full['ratio'], TARGETS['a'][1])} |"
        )
    if full and "seed" in full:
        rows.append(
            f"| (a) | full job vs the seed pipeline (minbase) | {_s(full['dualbuild']['median'])} | "
            f"{_s(full['seed']['median'])} | {full['ratio_seed']:.2f} | — | information |"
        )
    conv = results.get("convert")
    if conv:
        label, target = TARGETS["convert"]
        rows.append(
            f"| convert | {label} | {_s(conv['dualbuild']['median'])} | {_s(conv['docker2aci']['median'])} | "
            f"{conv['ratio']:.2f} | ≤ {target} | {_verdict(conv['ratio'], target)} |"
        )
    exports = results.get("exports", {})
    for name, data in exports.items():
        ratio = data["ratio_export_vs_floor"]
        rows.append(
            f"| (b) | {TARGETS['b'][0]} ({name}) | {_s(data['full']['median'])} | "
            f"{_s(data['floor']['median'])} | {ratio:.2f} | ≤ {TARGETS['b'][1]} | "
            f"{_verdict(ratio, TARGETS['b'][1])} |"
        )
    for name, data in exports.items():
        ratio = data["ratio_full_vs_docker"]
        rows.append(
            f"| (c) | {TARGETS['c'][0]} ({name}) | {_s(data['full']['median'])} | "
            f"{_s(data['docker']['median'])} | {ratio:.2f} | ≤ {TARGETS['c'][1]} | "
            f"{_verdict(ratio, TARGETS['c'][1])} |"
        )
    rss = {name: data["peak_rss_mib"]["full"] for name, data in exports.items()}
    for name, mib in rss.items():
        verdict = "**met**" if mib <= RSS_TARGET_MIB else f"**not met** ({mib / RSS_TARGET_MIB:.1f}× over)"
        rows.append(
            f"| (d) | peak RSS of the export ({name}) | {mib:.0f} MiB | | | "
            f"≤ {RSS_TARGET_MIB:.0f} MiB | {verdict} |"
        )
    if len(rss) > 1:
        spread = max(rss.values()) - min(rss.values())
        rows.append(
            f"| (d) | RSS spread across trees (flat?) | {spread:.0f} MiB | | | flat | "
            f"min {min(rss.values()):.0f} / max {max(rss.values()):.0f} MiB |"
        )
    if "files10k" in exports and "files100k" in exports:
        small, big = exports["files10k"]["full"]["median"], exports["files100k"]["full"]["median"]
        ratio = big / small
        rows.append(
            f"| (e) | {TARGETS['e'][0]} | {_s(big)} | {_s(small)} | {ratio:.2f} | ≤ {TARGETS['e'][1]} | "
            f"{_verdict(ratio, TARGETS['e'][1])} |"
        )
    return ["### Targets", "", *rows, ""]


def _phase_text(phases: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())


def _full_job(full: Mapping[str, Any], left_out: str | None) -> list[str]:
    sizes = full.get("sizes", {})
    seed_rows = []
    if "seed" in full:
        seed_rows.append(
            f"| `bench/seed-pipeline.sh` | {_runs(full['seed'])} | {_phase_text(full['seed_phases'])} |"
        )
    seed_text = ""
    if "seed" in full:
        tools = full.get("seed_tools", {})
        seed_text = (
            f" The seed pipeline ({tools.get('docker2aci', 'docker2aci')}, dockerd "
            f"{tools.get('docker', '?')} with {tools.get('storage_driver', '?')}): "
            f"dualbuild / seed = {full['ratio_seed']:.2f}, "
            f"dualbuild / (buildah + actool) = {full['ratio']:.2f}; seed artifact sizes "
            f"{json.dumps(sizes.get('seed', {}))}."
        )
    elif left_out:
        seed_text = f" {left_out[0].upper()}{left_out[1:]}."
    return [
        "### (a) Full job: minbase rootfs + one write step → Docker tarball + signed ACI",
        "",
        "| | wall time: median (runs) | phases, medians (s) |",
        "|---|---|---|",
        f"| `dualbuild build --no-cache` | {_runs(full['dualbuild'])} | "
        f"{_phase_text(full['dualbuild_phases'])} |",
        f"| `bench/existing-tools.sh` | {_runs(full['existing'])} | {_phase_text(full['existing_phases'])} |",
        *seed_rows,
        "",
        f"Artifact sizes (bytes): dualbuild {json.dumps(sizes.get('dualbuild', {}))}; "
        f"existing tools {json.dumps(sizes.get('existing', {}))}.{seed_text}",
        "",
    ]


def _convert(conv: Mapping[str, Any] | None, skipped: str | None) -> list[str]:
    title = ["### Convert: the (a) tree's Docker tarball → signed ACI", ""]
    if conv is None:
        return [*title, f"{(skipped or 'skipped')[0].upper()}{(skipped or 'skipped')[1:]}.", ""]
    sizes = conv.get("sizes", {})
    return [
        *title,
        "| | wall time: median (runs) | phases, medians (s) |",
        "|---|---|---|",
        f"| `dualbuild convert --format aci` (signed) | {_runs(conv['dualbuild'])} | |",
        f"| `bench/docker2aci-sign.sh` | {_runs(conv['docker2aci'])} | "
        f"{_phase_text(conv.get('docker2aci_phases', {}))} |",
        "",
        f"Source: {conv['source']['path']} ({conv['source']['bytes']} bytes). dualbuild / docker2aci = "
        f"{conv['ratio']:.2f} (target ≤ {conv.get('target', TARGETS['convert'][1])}). Artifact sizes "
        f"(bytes): dualbuild {json.dumps(sizes.get('dualbuild', {}))}; docker2aci "
        f"{json.dumps(sizes.get('docker2aci', {}))}.",
        "",
    ]


def _exports(exports: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    rows = [
        "| tree | entries | bytes | floor tar\\|pigz -p2 | Docker only | Docker + ACI + sig | "
        "full / floor | full / Docker | peak RSS Docker / full | tar\\|pigz -p2 -1 (info) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    phase_rows = [
        "| tree | snapshot | docker emitter | aci emitter | emit (parallel) | sign | export |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, data in exports.items():
        tree = facts.get(name, {})
        rss = data["peak_rss_mib"]
        fast = _runs(data["floor_fast"]) if "floor_fast" in data else "—"
        rows.append(
            f"| {name} | {tree.get('entries', data.get('entries'))} | {tree.get('bytes', 0) / 1e6:.0f} MB | "
            f"{_runs(data['floor'])} | {_runs(data['docker'])} | {_runs(data['full'])} | "
            f"{data['ratio_export_vs_floor']:.2f} | {data['ratio_full_vs_docker']:.2f} | "
            f"{rss['docker']:.0f} / {rss['full']:.0f} MiB | {fast} |"
        )
        p = data["full_phases"]
        phase_rows.append(
            f"| {name} | {p.get('snapshot', 0):.2f} | {p.get('emit_docker', 0):.2f} | "
            f"{p.get('emit_aci', 0):.2f} | {p.get('emit', 0):.2f} | {p.get('sign', 0):.2f} | "
            f"{p.get('export', 0):.2f} |"
        )
    return [
        "### (b) (c) (d) Export phase per tree",
        "",
        *rows,
        "",
        "Phases of the full export (Docker + ACI + signature), medians in seconds; the two "
        "emitters run in parallel, so their times overlap. Since the fifth round the tree is "
        "walked while it is written (`tree.stream`): the walk is inside the emitters' times, "
        "and the snapshot column (earlier rounds' walk before the emit) is 0:",
        "",
        *phase_rows,
        "",
    ]


def _rebuild(rebuild: Mapping[str, Any], full: Mapping[str, Any] | None) -> list[str]:
    rows = [
        "| build of the (a) recipe | wall time: median (runs) | vs cold (cache pruned) "
        "| phases, medians (s) |",
        "|---|---|---|---|",
    ]
    cold = rebuild["cold"]["median"]
    if full:
        rows.append(
            f"| cold, `--no-cache` (from (a)) | {_runs(full['dualbuild'])} | "
            f"{full['dualbuild']['median'] / cold:.2f} | {_phase_text(full['dualbuild_phases'])} |"
        )
    phases = rebuild.get("phases", {})
    rows.append(
        f"| cold, cache pruned first (fills the cache) | {_runs(rebuild['cold'])} | 1.00 | "
        f"{_phase_text(phases.get('cold', {}))} |"
    )
    rows.append(
        f"| unchanged rebuild (up to date) | {_runs(rebuild['unchanged'])} | "
        f"{rebuild['ratio_unchanged_vs_cold']:.3f} | — |"
    )
    rows.append(
        f"| artifacts deleted (every step cached, emit re-run) | {_runs(rebuild['artifacts_deleted'])} | "
        f"{rebuild['ratio_artifacts_deleted_vs_cold']:.2f} | "
        f"{_phase_text(phases.get('artifacts_deleted', {}))} |"
    )
    ratio = rebuild["ratio_unchanged_vs_cold"]
    verdict = "met" if ratio <= 0.10 else "not met"
    extra = ""
    if full:
        ratio_nc = rebuild["unchanged"]["median"] / full["dualbuild"]["median"]
        extra = f"; against the `--no-cache` cold build it is {ratio_nc:.3f}"
    return [
        "### Issue 7: rebuilds",
        "",
        *rows,
        "",
        f"Unchanged rebuild / cold = {ratio:.3f} (target ≤ 0.10: **{verdict}**){extra}.",
        "",
    ]


def _profiles(profiles: Mapping[str, Any]) -> list[str]:
    lines = ["### Profiles (py-spy, all threads; share of each thread's samples)", ""]
    for name, data in profiles.items():
        lines.append(f"**{name}** (`{data['raw']}`)")
        lines.append("")
        for thread, info in list(data["threads"].items())[:4]:
            top = "; ".join(f"{fn} {pct}%" for fn, pct in info["self"][:8])
            lines.append(f"- {thread}, {info['seconds']} s sampled; self: {top}")
        lines.append("")
    return lines


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS.json")
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
