"""The build, read as a list of calls: recipe → plan → stages → tree → emit → sign → report.

Outputs are written under pending names and renamed together at the end, so a failed or
interrupted build leaves the output directory as it was: no half-written or unsigned artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dualbuild import __version__, gpg, run, settings
from dualbuild.builder.buildah import NAME_PREFIX
from dualbuild.builder.held import HeldSession, session
from dualbuild.builder.secrets import check_secrets, secret_ids
from dualbuild.builder.stages import BuildOptions, BuildSession, StepTiming
from dualbuild.builder.storage import temporary_storage
from dualbuild.emit import run_emitters
from dualbuild.emit.acichain import LayerAci, Signer, write_aci_chain
from dualbuild.emit.artifact import Artifact, ImageSpec
from dualbuild.errors import BuildError, ReportError, SigningError
from dualbuild.files import file_sha256, known_digests, remember_digest, remember_digests, scratch_directory
from dualbuild.layer.diff import non_empty
from dualbuild.layer.layers import ImageLayers, MadeLayer
from dualbuild.layer.tarwriter import Writable
from dualbuild.layer.tree import stream
from dualbuild.leftovers import kill_commands_of_dead_processes, reclaim, scratch_directories
from dualbuild.log import log, status
from dualbuild.plan import BuildPlan, make_plan
from dualbuild.recipe import load_recipe
from dualbuild.recipe.model import Format, Recipe
from dualbuild.report import AciLayer, ImageRecord, Report, Signature, read_report, write_report
from dualbuild.sign.keys import check_signing_key
from dualbuild.sign.signer import SigningKey, signing_stream
from dualbuild.verify.diff import diff_archives


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """What `dualbuild build` was asked to do.

    Attributes:
        recipe: The recipe file.
        build_args: ``--build-arg`` values.
        overrides: Context, output folder, signing key and isolation from the command line.
        sign: Whether the ACI is signed (``--no-sign`` turns it off).
        options: How the stages are run (TLS, credentials, keyring, storage, cache).
        environ: The environment settings are read from.
    """

    recipe: Path
    build_args: Mapping[str, str] = field(default_factory=dict)
    overrides: settings.Overrides = field(default_factory=settings.Overrides)
    sign: bool = True
    options: BuildOptions = field(default_factory=BuildOptions)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def build(request: BuildRequest) -> Report:
    """Build the recipe into its artifacts; return the report (also written next to them).

    Raises:
        RecipeError: the recipe or a --build-arg is invalid (exit 2).
        SigningError: no usable signing key (checked before anything is built; exit 4).
        BuildError: a base or step failed (exit 1).
        Interrupted: SIGINT/SIGTERM (exit 130/143), after cleaning up.
    """
    return build_recipe(load_recipe(request.recipe, request.build_args), request)


def build_recipe(recipe: Recipe, request: BuildRequest) -> Report:
    """Build an already loaded recipe (``build`` and ``convert`` share this)."""
    began = time.monotonic()
    plan = make_plan(recipe, settings.resolve(recipe, request.overrides, request.environ), sign=request.sign)
    _check_out_dir(plan.settings.out_dir)
    # A secret's variable is read from dualbuild's own environment, as the steps will get it.
    check_secrets(secret_ids(plan), plan.settings.secrets, plan.settings.context, os.environ)
    # What builds killed with SIGKILL left (their containers go when the session starts); first
    # the commands they started that still run, which would write in their folders meanwhile.
    kill_commands_of_dead_processes(NAME_PREFIX)
    reclaim(scratch_directories(), outputs=[plan.settings.out_dir, plan.settings.cache_dir])
    key, warnings = _signing_key(plan, request.sign)
    for warning in warnings:
        log.warning("%s", warning)
    cache = request.options.cache
    previous = _previous_report(plan) if cache else None
    if previous is not None:
        # File digests of the last build, valid while each file's stamp is unchanged.
        remember_digests(previous.digests)
    start = time.monotonic()
    with session(plan, request.options) as building:
        # Keying (bases pulled, found, hashed) is part of the "stages" phase, as before it was.
        keying = time.monotonic() - start
        # Recorded after --no-cache too: its fresh artifacts are what the next build would make.
        build_key = _build_key(plan, building, key)
        if previous is not None and _up_to_date(plan, previous, build_key):
            log.info(
                "up to date: the recipe, its inputs and the artifacts are unchanged (--no-cache rebuilds)"
            )
            current = _in_this_out_dir(plan, previous).with_digests(known_digests())
            if current != previous:
                # Files were hashed again (touched, copied back) or the folder was copied: say so.
                write_report(_report_path(plan), current)
            return current
        return _build_and_write(plan, building, key, warnings, build_key, began, keying)


def _build_and_write(
    plan: BuildPlan,
    building: BuildSession | HeldSession,
    key: SigningKey | None,
    warnings: list[str],
    build_key: str | None,
    began: float,
    keying: float,
) -> Report:
    """Build the stages, write every artifact and the report, and show them all at once."""
    timings: dict[str, float] = {}
    targets = plan.artifacts.by_format()
    # Outputs are written in a private folder beside their final place (same file system, so
    # the final renames are atomic), under their final names, so logs name them as users know them.
    staging = plan.settings.out_dir / f".dualbuild-{os.getpid()}"
    pending = {fmt: staging / path.name for fmt, path in targets.items()}
    signature = plan.artifacts.aci_signature
    pending_signature = staging / signature.name if signature is not None else None
    staging.mkdir(parents=True, exist_ok=True)
    try:
        start = time.monotonic()
        built = building.build()
        run.check_interrupted()
        timings["stages"] = keying + time.monotonic() - start
        # Part of "stages": the bases found and hashed, every position keyed.
        timings["keying"] = keying
        spec = ImageSpec(
            image=plan.recipe.image, config=built.config, source_date_epoch=plan.settings.source_date_epoch
        )
        # Walked while the formats are written (in "emit"): memory stays flat in the
        # number of entries, and the walk overlaps the hashing and compression.
        if built.tree is not None:
            tree = built.tree
        else:
            assert built.rootfs is not None
            tree = stream(built.rootfs, spec.source_date_epoch)
        layers = non_empty(built.layers, spec.source_date_epoch) if built.layers is not None else None
        # An ACI dependency chain is written after the image's layers, whose diff_ids name its ACIs.
        chained = plan.recipe.output.chained_aci
        first = {fmt: path for fmt, path in pending.items() if not (chained and fmt is Format.ACI)}
        start = time.monotonic()
        with contextlib.ExitStack() as signer:
            taps: dict[Format, Writable] = {}
            if key is not None and pending_signature is not None and not chained:
                # The signer reads the ACI's bytes as they are written, on the other core.
                name = pending[Format.ACI].name
                taps[Format.ACI] = signer.enter_context(signing_stream(name, pending_signature, key))
            formats = ", ".join(str(fmt) for fmt in first) + (" (signed)" if taps else "")
            with status.show(f"writing {formats}"):
                artifacts = (
                    run_emitters(tree, spec, first, taps=taps, timings=timings, layers=layers)
                    if first
                    else []
                )
            aci_layers: tuple[AciLayer, ...] = ()
            if chained:
                # A chain is written from mounted trees (builder/held.py never holds one).
                assert built.rootfs is not None
                with status.show("writing the ACI dependency chain" + (" (signed)" if key else "")):
                    aci, chain = write_aci_chain(
                        built.rootfs, layers or _squashed(built.rootfs), spec, artifacts, pending[Format.ACI],
                        signer=_signer(key), timings=timings,
                    )  # fmt: skip
                artifacts = sorted(
                    [*artifacts, aci], key=lambda artifact: list(pending).index(artifact.format)
                )
                aci_layers = tuple(_aci_layer(written, signed=key is not None) for written in chain)
            # The emitters logged what their formats cannot carry; the report lists it once.
            lost = (warning for artifact in artifacts for warning in artifact.warnings)
            warnings = list(dict.fromkeys([*warnings, *tree.warnings, *lost]))
            # What the walk left out (sockets) it only collected: it is said here, once.
            for warning in tree.warnings:
                log.warning("%s", warning)
            timings["emit"] = time.monotonic() - start
            start = time.monotonic()
        if taps:
            # Only the wait for the signer to finish once the ACI is written: it signed meanwhile.
            timings["sign"] = time.monotonic() - start
        timings["total"] = time.monotonic() - began
        run.check_interrupted()
        # A draft of the report where the artifacts wait: a full disk or a failing write stops the
        # build here, before anything in the output folder is replaced.
        write_report(
            staging / _report_path(plan).name,
            _report(plan, artifacts, key, warnings, timings, build_key, built.step_timings, aci_layers),
        )
        # Every output is complete: make them visible together, not interrupted half-way. The
        # report is the set's seal: the old one goes first and the new one comes last, so a set
        # cut short (SIGKILL) has no report, which publish and the up-to-date check refuse,
        # rather than an old report beside new files.
        with run.deferred_interrupts():
            _report_path(plan).unlink(missing_ok=True)
            for fmt, path in pending.items():
                path.replace(targets[fmt])
            if pending_signature is not None and signature is not None:
                pending_signature.replace(signature)
            for artifact in artifacts:
                remember_digest(targets[artifact.format], artifact.sha256)
            for layer in aci_layers:
                for written in (layer.file, layer.signature) if layer.signed else (layer.file,):
                    written.replace(plan.settings.out_dir / written.name)
                remember_digest(plan.settings.out_dir / layer.file.name, layer.sha256)
            # Written again now that the files are in place: their stamps are what it remembers.
            aci_layers = tuple(
                dataclasses.replace(layer, file=plan.settings.out_dir / layer.file.name)
                for layer in aci_layers
            )
            report = _report(
                plan, artifacts, key, warnings, timings, build_key, built.step_timings, aci_layers
            )
            write_report(_report_path(plan), report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("timings: %s", ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in timings.items()))
    return report


def _squashed(root: Path) -> ImageLayers:
    """The one layer of a squashed image (``layers = "squash"``): the whole tree."""
    return ImageLayers(made=(MadeLayer(lower=None, upper=root, created_by="dualbuild"),))


def _signer(key: SigningKey | None) -> Signer | None:
    """Each ACI of a chain signed while it is written, its ``.asc`` beside it."""
    if key is None:
        return None
    return lambda path: signing_stream(path.name, path.with_name(path.name + ".asc"), key)


def _aci_layer(written: LayerAci, *, signed: bool) -> AciLayer:
    return AciLayer(
        file=written.path, version=written.version, sha256=written.sha256, size=written.size,
        image_id=written.image_id, signed=signed,
    )  # fmt: skip


def _check_out_dir(out_dir: Path) -> None:
    """Check, before anything is built, that the output directory can be made and written.

    Raises:
        BuildError: it cannot (a read-only file system, a file in its path).
    """
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a directory")
        probe = existing / f".dualbuild-probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        raise BuildError(
            f"cannot write to the output directory {out_dir}: {error.strerror or error}",
            hint="choose another one with --out (or [output].dir)",
        ) from None


def _report_path(plan: BuildPlan) -> Path:
    assert plan.artifacts.report is not None
    return plan.artifacts.report


def _build_key(plan: BuildPlan, building: BuildSession | HeldSession, key: SigningKey | None) -> str:
    """What decides every output byte: the final tree's key, the recipe, its args, the key."""
    parts = {
        "tree": building.keyed.final_key,
        "recipe": file_sha256(plan.recipe.path) if plan.recipe.path.is_file() else repr(plan.recipe),
        "args": dict(plan.args),
        "source_date_epoch": plan.settings.source_date_epoch,
        "signing_key": key.fingerprint if key is not None else None,
        # The effective layering, default included: a new default is a new output.
        "layers": str(plan.recipe.output.layers),
        "dualbuild": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _previous_report(plan: BuildPlan) -> Report | None:
    try:
        return read_report(_report_path(plan))
    except (OSError, ReportError):
        return None


def _up_to_date(plan: BuildPlan, previous: Report, build_key: str) -> bool:
    """Whether the last report was made with this build key and this --out holds its artifacts.

    The files looked at are the ones this build would write (not the paths the report names:
    a copied output folder has the report of another), each with the recorded sha256 (hashed
    again unless its stamp is the one recorded, see dualbuild.files.file_stamp), and the ACI's
    signature must verify.
    """
    if previous.build_key != build_key:
        return False
    targets = plan.artifacts.by_format()
    if {artifact.format for artifact in previous.artifacts} != set(targets):
        return False
    for artifact in previous.artifacts:
        path = targets[artifact.format]
        if not path.is_file() or file_sha256(path) != artifact.sha256:
            return False
    for layer in previous.aci_layers:
        # The chain's ACIs, where this build would write them, as recorded and signed.
        path = plan.settings.out_dir / layer.file.name
        if not path.is_file() or file_sha256(path) != layer.sha256:
            return False
        if layer.signed:
            try:
                gpg.verify_in_keyring(path, path.with_name(path.name + ".asc"), plan.settings.gnupghome)
            except SigningError:
                return False
    signature, aci = plan.artifacts.aci_signature, plan.artifacts.aci
    if signature is None or aci is None:
        return previous.signature is None
    if previous.signature is None or not signature.is_file():
        return False
    try:
        gpg.verify_in_keyring(aci, signature, plan.settings.gnupghome)
    except SigningError:
        return False
    return True


def _in_this_out_dir(plan: BuildPlan, report: Report) -> Report:
    """The report with the paths of this build's files (a copied folder's report names others)."""
    targets = plan.artifacts.by_format()
    signature = plan.artifacts.aci_signature
    return dataclasses.replace(
        report,
        artifacts=tuple(dataclasses.replace(a, path=targets[a.format]) for a in report.artifacts),
        signature=dataclasses.replace(report.signature, file=signature)
        if report.signature is not None and signature is not None
        else report.signature,
    )


def check_reproducible(request: BuildRequest) -> tuple[Report, list[str]]:
    """Build twice, each time in fresh buildah storage without the cache, and compare.

    Returns:
        The first build's report, and the differences (empty when every artifact is identical).
    """
    recipe = load_recipe(request.recipe, request.build_args)
    fresh = dataclasses.replace(request.options, cache=False, keep=False)
    with temporary_storage() as storage:
        first = build_recipe(
            recipe, dataclasses.replace(request, options=dataclasses.replace(fresh, storage=storage))
        )
    with scratch_directory("repro") as scratch, temporary_storage() as storage:
        second = build_recipe(
            recipe,
            dataclasses.replace(
                request,
                overrides=dataclasses.replace(request.overrides, out_dir=Path(scratch)),
                options=dataclasses.replace(fresh, storage=storage),
            ),
        )
        differences: list[str] = []
        for artifact in first.artifacts:
            other = second.artifact(artifact.format)
            if other is None or artifact.sha256 != other.sha256:
                found = diff_archives(artifact.path, other.path) if other is not None else []
                differences.append(
                    f"{artifact.format}: {artifact.sha256} vs {other.sha256 if other else None}"
                )
                differences.extend(
                    f"  {line}" for line in found or ["the archives differ after their last entry"]
                )
    return first, differences


def _signing_key(plan: BuildPlan, sign: bool) -> tuple[SigningKey | None, list[str]]:
    if plan.artifacts.aci is None or not sign:
        return None, []
    selector = plan.settings.sign_key
    if selector is None:
        raise SigningError(
            "the ACI must be signed, but no signing key is set",
            hint="pass --sign-key, set $DUALBUILD_SIGN_KEY or [sign].key, or build with --no-sign",
        )
    return check_signing_key(selector, gnupghome=plan.settings.gnupghome, passphrase=plan.settings.passphrase)


def _report(
    plan: BuildPlan,
    artifacts: list[Artifact],
    key: SigningKey | None,
    warnings: list[str],
    timings: Mapping[str, float],
    build_key: str | None,
    step_timings: tuple[StepTiming, ...],
    aci_layers: tuple[AciLayer, ...] = (),
) -> Report:
    image = plan.recipe.image
    targets = plan.artifacts.by_format()
    signature = plan.artifacts.aci_signature
    return Report(
        dualbuild=__version__,
        recipe=plan.recipe.path,
        recipe_sha256=file_sha256(plan.recipe.path) if plan.recipe.path.is_file() else None,
        image=ImageRecord(
            name=image.name, version=image.version, tags=image.tags, os=image.os, arch=str(image.arch)
        ),
        source_date_epoch=plan.settings.source_date_epoch,
        artifacts=tuple(
            dataclasses.replace(artifact, path=targets[artifact.format]) for artifact in artifacts
        ),
        signature=Signature(file=signature, signing_key=key.fingerprint)
        if signature is not None and key is not None
        else None,
        warnings=tuple(warnings),
        timings={phase: round(seconds, 3) for phase, seconds in timings.items()},
        step_timings=step_timings,
        build_key=build_key,
        digests=known_digests(),
        aci_layers=aci_layers,
    )
