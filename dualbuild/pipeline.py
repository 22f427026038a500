"""The build, read as a list of calls: recipe → plan → stages → tree → emit → sign → report.

Outputs are written under pending names and renamed together at the end, so a failed or
interrupted build leaves the output directory as it was: no half-written or unsigned artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import __version__, run
from dualbuild.build.buildah import StorageOptions, temporary_storage
from dualbuild.build.cache import file_sha256, known_digests, remember_digest, remember_digests
from dualbuild.build.stages import BuildOptions, build_stages, default_cache_dir, final_key
from dualbuild.emit import Artifact, run_emitters
from dualbuild.errors import SigningError
from dualbuild.layer.tarwriter import Writable
from dualbuild.layer.tree import stream
from dualbuild.log import log, status
from dualbuild.plan import BuildPlan, make_plan
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.model import Format, Recipe
from dualbuild.sign.keys import PASSPHRASE_ENV, SigningKey, check_signing_key, choose_key, signing_stream
from dualbuild.verify.diff import diff_archives


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """What `dualbuild build` was asked to do."""

    recipe: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    context: Path | None = None
    out_dir: Path | None = None
    sign: bool = True
    sign_key: str | None = None
    isolation: str | None = None
    tls_verify: bool = True
    authfile: Path | None = None
    keyring: Path | None = None
    storage: StorageOptions = field(default_factory=StorageOptions)
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache: bool = True
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def build(request: BuildRequest) -> dict[str, object]:
    """Build the recipe into its artifacts; return the report (also written next to them).

    Raises:
        RecipeError: the recipe or a --build-arg is invalid (exit 2).
        SigningError: no usable signing key (checked before anything is built; exit 4).
        BuildError: a base or step failed (exit 1).
        Interrupted: SIGINT/SIGTERM (exit 130/143), after cleaning up.
    """
    return build_recipe(load_recipe(request.recipe), request)


def build_recipe(recipe: Recipe, request: BuildRequest) -> dict[str, object]:
    """Build an already loaded recipe (``build`` and ``convert`` share this)."""
    began = time.monotonic()
    timings: dict[str, float] = {}
    plan = make_plan(
        recipe, build_args=request.build_args, context=request.context, out_dir=request.out_dir,
        environ=request.environ, sign=request.sign,
    )  # fmt: skip
    key, warnings = _signing_key(plan, request)
    warnings += list(plan.warnings)
    for warning in warnings:
        log.warning("%s", warning)
    targets = _targets(plan)
    # Outputs are written in a private folder beside their final place (same file system, so
    # the final renames are atomic), under their final names, so logs name them as users know them.
    staging = plan.out_dir / f".dualbuild-{os.getpid()}"
    pending = {fmt: staging / path.name for fmt, path in targets.items()}
    signature = plan.artifacts.aci_signature
    pending_signature = staging / signature.name if signature is not None else None
    options = BuildOptions(
        isolation=request.isolation, tls_verify=request.tls_verify, authfile=request.authfile,
        keyring=request.keyring, storage=request.storage, cache_dir=request.cache_dir, cache=request.cache,
    )  # fmt: skip
    previous_report = _previous_report(plan)
    if request.cache:
        # File digests of the last build, valid while each file's stamp is unchanged.
        remember_digests(previous_report.get("digests"))
    build_key = _build_key(plan, options, key) if request.cache else None
    if build_key is not None and (previous := _up_to_date(plan, previous_report, build_key)) is not None:
        log.info("up to date: the recipe, its inputs and the artifacts are unchanged (--no-cache rebuilds)")
        if previous.get("digests") != (digests := known_digests()):
            # Files were hashed again (touched, copied back): remember them for the next check.
            previous["digests"] = digests
            _write_json_atomically(plan.artifacts.report, previous)
        return previous
    staging.mkdir(parents=True, exist_ok=True)
    try:
        start = time.monotonic()
        with build_stages(plan, options) as built:
            timings["stages"] = time.monotonic() - start
            # Walked while the formats are written (in "emit"): memory stays flat in the
            # number of entries, and the walk overlaps the hashing and compression.
            tree = stream(built.rootfs, plan.source_date_epoch)
            start = time.monotonic()
            with contextlib.ExitStack() as signer:
                taps: dict[Format, Writable] = {}
                if key is not None and pending_signature is not None:
                    # gpg reads the ACI's bytes as they are written, on the other core.
                    name = pending[Format.ACI].name
                    taps[Format.ACI] = signer.enter_context(signing_stream(name, pending_signature, key))
                formats = ", ".join(str(fmt) for fmt in pending) + (" (signed)" if taps else "")
                with status.show(f"writing {formats}"):
                    artifacts = run_emitters(
                        tree, plan.recipe.image, built.config, plan.source_date_epoch, pending,
                        taps=taps, timings=timings,
                    )  # fmt: skip
                warnings += list(tree.warnings)
                timings["emit"] = time.monotonic() - start
                start = time.monotonic()
            if taps:
                # Only the wait for gpg to finish once the ACI is written: it signed meanwhile.
                timings["sign"] = time.monotonic() - start
        timings["total"] = time.monotonic() - began
        report = _report(plan, artifacts, targets, key, warnings, timings)
        report["build_key"] = build_key
        # Every output is complete: make them visible together, not interrupted half-way.
        with run.deferred_interrupts():
            for fmt, path in pending.items():
                path.replace(targets[fmt])
            if pending_signature is not None and signature is not None:
                pending_signature.replace(signature)
            for artifact in artifacts:
                remember_digest(targets[artifact.format], artifact.sha256)
            report["digests"] = known_digests()
            _write_json_atomically(plan.artifacts.report, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("timings: %s", ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in timings.items()))
    return report


def _build_key(plan: BuildPlan, options: BuildOptions, key: SigningKey | None) -> str:
    """What decides every output byte: the final tree's key, the recipe, its args, the key."""
    parts = {
        "tree": final_key(plan, options),
        "recipe": file_sha256(plan.recipe.path) if plan.recipe.path.is_file() else repr(plan.recipe),
        "args": dict(plan.args),
        "source_date_epoch": plan.source_date_epoch,
        "signing_key": key.fingerprint if key is not None else None,
        "dualbuild": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _previous_report(plan: BuildPlan) -> dict[str, object]:
    try:
        previous = json.loads(plan.artifacts.report.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _up_to_date(plan: BuildPlan, previous: dict[str, object], build_key: str) -> dict[str, object] | None:
    """The last report, if it was made with this build key and its artifacts are intact.

    "Intact" is the recorded sha256, checked by hashing unless the file's stamp is the one
    recorded with that digest (see dualbuild.cache.file_stamp).
    """
    if previous.get("build_key") != build_key:
        return None
    artifacts = previous.get("artifacts")
    if not isinstance(artifacts, dict) or set(artifacts) != {str(f) for f in _targets(plan)}:
        return None
    for entry in artifacts.values():
        path = Path(str(entry.get("file"))) if isinstance(entry, dict) else None
        if path is None or not path.is_file() or file_sha256(path) != entry.get("sha256"):
            return None
        signature = entry.get("signature")
        if signature is not None and not Path(str(signature)).is_file():
            return None
    return previous


def check_reproducible(request: BuildRequest) -> tuple[dict[str, object], list[str]]:
    """Build twice, each time in fresh buildah storage without the cache, and compare.

    Returns:
        The first build's report, and the differences (empty when every artifact is identical).
    """
    recipe = load_recipe(request.recipe)
    with temporary_storage() as storage:
        first = build_recipe(recipe, dataclasses.replace(request, storage=storage, cache=False))
    with tempfile.TemporaryDirectory(prefix="dualbuild-repro-") as scratch, temporary_storage() as storage:
        second = build_recipe(
            recipe, dataclasses.replace(request, storage=storage, cache=False, out_dir=Path(scratch))
        )
        differences: list[str] = []
        for name, entry in _artifact_entries(first).items():
            other = _artifact_entries(second).get(name, {})
            if entry.get("sha256") != other.get("sha256"):
                found = diff_archives(Path(str(entry["file"])), Path(str(other["file"])))
                differences.append(f"{name}: {entry.get('sha256')} vs {other.get('sha256')}")
                differences.extend(
                    f"  {line}" for line in found or ["the archives differ after their last entry"]
                )
    return first, differences


def _artifact_entries(report: Mapping[str, object]) -> dict[str, dict[str, object]]:
    artifacts = report.get("artifacts")
    return (
        {str(k): v for k, v in artifacts.items() if isinstance(v, dict)}
        if isinstance(artifacts, dict)
        else {}
    )


def _signing_key(plan: BuildPlan, request: BuildRequest) -> tuple[SigningKey | None, list[str]]:
    if plan.artifacts.aci is None or not request.sign:
        return None, []
    selector = choose_key(request.sign_key, request.environ, plan.recipe.sign.key)
    if selector is None:
        raise SigningError(
            "the ACI must be signed, but no signing key is set",
            hint="pass --sign-key, set $DUALBUILD_SIGN_KEY or [sign].key, or build with --no-sign",
        )
    gnupghome = request.environ.get("GNUPGHOME")
    return check_signing_key(
        selector, gnupghome=Path(gnupghome) if gnupghome else None,
        passphrase=request.environ.get(PASSPHRASE_ENV),
    )  # fmt: skip


def _targets(plan: BuildPlan) -> dict[Format, Path]:
    artifacts = plan.artifacts
    candidates = {Format.DOCKER: artifacts.docker, Format.ACI: artifacts.aci, Format.OCI: artifacts.oci}
    return {fmt: path for fmt, path in candidates.items() if path is not None}


def _report(
    plan: BuildPlan,
    artifacts: list[Artifact],
    targets: Mapping[Format, Path],
    key: SigningKey | None,
    warnings: list[str],
    timings: Mapping[str, float],
) -> dict[str, object]:
    image = plan.recipe.image
    outputs: dict[str, object] = {}
    for artifact in artifacts:
        entry = dataclasses.replace(artifact, path=targets[artifact.format]).to_dict()
        if artifact.format is Format.ACI and plan.artifacts.aci_signature is not None and key is not None:
            entry["signature"] = str(plan.artifacts.aci_signature)
            entry["signing_key"] = key.fingerprint
        outputs[str(artifact.format)] = entry
    return {
        "dualbuild": __version__,
        "recipe": {
            "path": str(plan.recipe.path),
            "sha256": file_sha256(plan.recipe.path) if plan.recipe.path.is_file() else None,
        },
        "image": {
            "name": image.name,
            "version": image.version,
            "tags": list(image.tags),
            "os": image.os,
            "arch": str(image.arch),
        },
        "source_date_epoch": plan.source_date_epoch,
        "artifacts": outputs,
        "warnings": warnings,
        "timings": {phase: round(seconds, 3) for phase, seconds in timings.items()},
    }


def _write_json_atomically(path: Path, data: Mapping[str, object]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(data, indent=2) + "\n")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
