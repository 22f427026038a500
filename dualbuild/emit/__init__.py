"""Emitters: from one Tree and one ImageConfig, write every requested output format in parallel.

Each emitter has the same signature::

    emit(layer, image, config, source_date_epoch, dest, *, tap=None) -> Artifact

and writes ``dest`` atomically (a temporary name in the same directory, renamed on success).
``layer`` is the tree itself (the emitter then reads it alone) or its subscription to a
:class:`~dualbuild.layer.feed.LayerFeed`, which :func:`run_emitters` uses so the tree is read
once for every format. ``tap`` gets the file's bytes in order (the ACI's signer).
The registry is an explicit dict (STYLE.md B2.9). The emitter modules import
:class:`Artifact` from here, so they are imported lazily inside :func:`emitters` to keep the
import graph acyclic.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dualbuild import log as logmod
from dualbuild.errors import BuildError, DualbuildError
from dualbuild.imageconfig import ImageConfig
from dualbuild.layer.feed import LayerFeed, LayerSource, Subscription
from dualbuild.layer.tarwriter import Writable, set_cancel_event
from dualbuild.layer.tree import Tree
from dualbuild.recipe.model import Format, Image


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One written output file and the identities a release pipeline needs.

    Attributes:
        format: Which format this is.
        path: The file written.
        sha256: Hex sha256 of the file's bytes (what ``sha256sum`` prints).
        size: Size of the file in bytes.
        image_id: Docker/OCI: the config digest ``sha256:<hex>`` (Docker's image ID);
            ACI: ``sha512-<hex>`` of the uncompressed tar (the appc image ID).
        config_digest: Docker/OCI: digest of the image config blob; None for the ACI.
        manifest_digest: Docker/OCI: digest of the OCI image manifest; None for the ACI.
        diff_ids: Docker/OCI: sha256 of each uncompressed layer tar, bottom to top.
        layer_digests: Docker/OCI: digest of each layer blob as stored (compressed or not).
        warnings: What this format could not carry, one line each, naming field and format.
    """

    format: Format
    path: Path
    sha256: str
    size: int
    image_id: str
    config_digest: str | None = None
    manifest_digest: str | None = None
    diff_ids: tuple[str, ...] = ()
    layer_digests: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready mapping for the build report."""
        return {
            "format": str(self.format),
            "file": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "image_id": self.image_id,
            "config_digest": self.config_digest,
            "manifest_digest": self.manifest_digest,
            "diff_ids": list(self.diff_ids),
            "layer_digests": list(self.layer_digests),
            "warnings": list(self.warnings),
        }


class Emitter(Protocol):
    """Writes one format's file from the layer and the config."""

    def __call__(
        self,
        layer: Tree | LayerSource,
        image: Image,
        config: ImageConfig,
        source_date_epoch: int,
        dest: Path,
        *,
        tap: Writable | None = None,
    ) -> Artifact:
        """Write ``dest``; return what was written."""


# The name prefix of the tree's entries inside each format's archive (appc.md §1.3).
LAYER_PREFIX = {Format.DOCKER: "", Format.OCI: "", Format.ACI: "rootfs/"}


class EmitError(BuildError):
    """One or more emitters failed; ``failures`` maps each failed format to its exception."""

    def __init__(self, failures: Mapping[Format, BaseException]) -> None:
        self.failures = dict(failures)
        lines = [f"  {fmt}: {_describe(exc)}" for fmt, exc in self.failures.items()]
        noun = "output" if len(lines) == 1 else "outputs"
        super().__init__(f"could not write {len(lines)} {noun}:\n" + "\n".join(lines))


def emitters() -> dict[Format, Emitter]:
    """The emitter of every format."""
    from dualbuild.emit.aci import emit_aci
    from dualbuild.emit.docker import emit_docker
    from dualbuild.emit.oci import emit_oci

    return {Format.DOCKER: emit_docker, Format.ACI: emit_aci, Format.OCI: emit_oci}


def run_emitters(
    tree: Tree,
    image: Image,
    config: ImageConfig,
    source_date_epoch: int,
    targets: Mapping[Format, Path],
    *,
    taps: Mapping[Format, Writable] | None = None,
    timings: MutableMapping[str, float] | None = None,
) -> list[Artifact]:
    """Write every target in parallel from one read of the tree.

    A :class:`LayerFeed` reads the tree once in a thread of its own and hands the tar to one
    thread per format. Every task runs in a copy of the caller's context (threads do not
    inherit contextvars), so each one's log lines carry its format as a prefix. An emitter
    that fails does not stop the others: all failures are collected and raised together. An
    interrupt (e.g. KeyboardInterrupt) cancels the producer and the emitters, which remove
    their temporary files, and is re-raised once they have stopped.

    Args:
        tree: The image tree.
        image: Name, version, tags, platform, labels, annotations.
        config: The runtime config of the image.
        source_date_epoch: Timestamp for ``created`` fields and the mtime clamp.
        targets: Output file per format.
        taps: Per format, a writer that also gets the file's bytes in order (e.g. a signer).
        timings: Gets each emitter's wall time as ``emit_<format>``, in seconds.

    Returns:
        The artifacts, in the order of ``targets``.

    Raises:
        EmitError: At least one emitter failed (the others' outputs are complete).
    """
    registry = emitters()
    cancel = threading.Event()
    feed = LayerFeed(tree, mtime_clamp=source_date_epoch)
    subscriptions = {fmt: feed.subscribe(LAYER_PREFIX[fmt]) for fmt in targets}
    results: dict[Format, Artifact] = {}
    failures: dict[Format, BaseException] = {}
    with ThreadPoolExecutor(max_workers=len(targets) + 1, thread_name_prefix="emit") as pool:
        producer_context = contextvars.copy_context()
        producer_context.run(set_cancel_event, cancel)
        pool.submit(producer_context.run, feed.run)
        futures: dict[Future[tuple[Artifact, float]], Format] = {}
        try:
            for fmt, dest in targets.items():
                job = functools.partial(
                    _run_one, registry[fmt], fmt, cancel, subscriptions[fmt], image, config,
                    source_date_epoch, dest, (taps or {}).get(fmt),
                )  # fmt: skip
                futures[pool.submit(contextvars.copy_context().run, job)] = fmt
            for future in as_completed(futures):
                fmt = futures[future]
                try:
                    results[fmt], seconds = future.result()
                    if timings is not None:
                        timings[f"emit_{fmt}"] = seconds
                except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                    failures[fmt] = exc
        except BaseException:
            # Interrupted: stop the producer and the workers (a producer waiting for a worker
            # that never started stops too); leaving the with-block waits for them.
            cancel.set()
            raise
    if failures:
        error = EmitError({fmt: failures[fmt] for fmt in targets if fmt in failures})
        raise error from next(iter(error.failures.values()))
    return [results[fmt] for fmt in targets]


def _run_one(
    emit: Emitter,
    fmt: Format,
    cancel: threading.Event,
    layer: Subscription,
    image: Image,
    config: ImageConfig,
    source_date_epoch: int,
    dest: Path,
    tap: Writable | None,
) -> tuple[Artifact, float]:
    set_cancel_event(cancel)
    start = time.monotonic()
    with logmod.prefixed(str(fmt)), logmod.timed(f"writing {dest.name}"):
        try:
            artifact = emit(layer, image, config, source_date_epoch, dest, tap=tap)
        except OSError as error:
            # Writes fail without a file name (ENOSPC, EIO): say which output it was.
            if error.filename:
                raise
            raise BuildError(f"{dest.name}: {error.strerror or error}") from error
        finally:
            # An emitter that failed before reading its layer must not hold up the producer.
            layer.abandon()
        for warning in artifact.warnings:
            logmod.log.warning("%s", warning)
        logmod.log.info("wrote %s (%d bytes)", dest.name, artifact.size)
    return artifact, time.monotonic() - start


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DualbuildError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"
