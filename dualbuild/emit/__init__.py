"""Emitters: from one tree and one ImageSpec, write every requested output format in parallel.

The registry is an explicit dict (STYLE.md B2.9) of the three emitters (docker, oci, aci);
what they share (their input, their result) is in :mod:`dualbuild.emit.artifact`.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from dualbuild import log as logmod
from dualbuild.emit.aci import emit_aci
from dualbuild.emit.artifact import LAYER_PREFIX, Artifact, Emitter, ImageSpec, MadeLayerSource, Stack
from dualbuild.emit.docker import emit_docker
from dualbuild.emit.oci import emit_oci
from dualbuild.errors import BuildError, DualbuildError
from dualbuild.layer.diff import changes, layer_tree
from dualbuild.layer.feed import LayerFeed, Subscription
from dualbuild.layer.layers import ImageLayers
from dualbuild.layer.tarwriter import Writable, set_cancel_event
from dualbuild.layer.tree import Tree
from dualbuild.recipe.model import Format

EMITTERS: dict[Format, Emitter] = {Format.DOCKER: emit_docker, Format.ACI: emit_aci, Format.OCI: emit_oci}


class EmitError(BuildError):
    """One or more emitters failed; ``failures`` maps each failed format to its exception."""

    def __init__(self, failures: Mapping[Format, BaseException]) -> None:
        self.failures = dict(failures)
        lines = [f"  {fmt}: {_describe(exc)}" for fmt, exc in self.failures.items()]
        noun = "output" if len(lines) == 1 else "outputs"
        super().__init__(f"could not write {len(lines)} {noun}:\n" + "\n".join(lines))


def run_emitters(
    tree: Tree,
    spec: ImageSpec,
    targets: Mapping[Format, Path],
    *,
    taps: Mapping[Format, Writable] | None = None,
    timings: MutableMapping[str, float] | None = None,
    layers: ImageLayers | None = None,
) -> list[Artifact]:
    """Write every target in parallel from one read of the tree (and of each layer).

    A :class:`LayerFeed` reads the tree once in a thread of its own and hands the tar to one
    thread per format. A layered image's made layers each get a feed of their own, read one
    after the other in a second thread for the Docker and OCI emitters; the ACI gets the tree.
    Every task runs in a copy of the caller's context (threads do not inherit contextvars), so
    each one's log lines carry its format as a prefix. An emitter
    that fails does not stop the others: all failures are collected and raised together. An
    interrupt (e.g. KeyboardInterrupt) cancels the producer and the emitters, which remove
    their temporary files, and is re-raised once they have stopped.

    Args:
        tree: The image tree.
        spec: The image's identity, its runtime config and source_date_epoch.
        targets: Output file per format.
        taps: Per format, a writer that also gets the file's bytes in order (e.g. a signer).
        timings: Gets each emitter's wall time as ``emit_<format>``, in seconds.
        layers: A layered image's layers (the Docker and OCI images), the made ones that change
            nothing left out (dualbuild.layer.diff.non_empty); None: one layer of the tree.

    Returns:
        The artifacts, in the order of ``targets``.

    Raises:
        EmitError: At least one emitter failed (the others' outputs are complete).
    """
    cancel = threading.Event()
    stacked = {fmt for fmt in targets if fmt in STACKED} if layers is not None else set()
    feed = LayerFeed(tree, mtime_clamp=spec.source_date_epoch)
    subscriptions: dict[Format, Subscription | Stack] = {
        fmt: feed.subscribe(LAYER_PREFIX[fmt]) for fmt in targets if fmt not in stacked
    }
    layer_feeds: list[LayerFeed] = []
    if layers is not None and stacked:
        layer_feeds, stacks = _stacks(layers, stacked, tree, spec.source_date_epoch)
        subscriptions.update(stacks)
    results: dict[Format, Artifact] = {}
    failures: dict[Format, BaseException] = {}
    with ThreadPoolExecutor(max_workers=len(targets) + 2, thread_name_prefix="emit") as pool:
        producer_context = contextvars.copy_context()
        producer_context.run(set_cancel_event, cancel)
        if len(subscriptions) > len(stacked):
            pool.submit(producer_context.run, feed.run)
        if layer_feeds:
            layers_context = contextvars.copy_context()
            layers_context.run(set_cancel_event, cancel)
            pool.submit(layers_context.run, _run_in_turn, layer_feeds)
        futures: dict[Future[tuple[Artifact, float]], Format] = {}
        try:
            for fmt, dest in targets.items():
                job = functools.partial(
                    _run_one,
                    EMITTERS[fmt],
                    fmt,
                    cancel,
                    subscriptions[fmt],
                    spec,
                    dest,
                    (taps or {}).get(fmt),
                )
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


# The formats that hold a layered image's layers (the ACI holds the whole tree).
STACKED = frozenset({Format.DOCKER, Format.OCI})


def _stacks(
    layers: ImageLayers, formats: set[Format], tree: Tree, source_date_epoch: int
) -> tuple[list[LayerFeed], dict[Format, Stack]]:
    """One feed per made layer, and each format's subscriptions to them, in order."""
    feeds: list[LayerFeed] = []
    made: dict[Format, list[MadeLayerSource]] = {fmt: [] for fmt in formats}
    for layer in layers.made:
        feed = LayerFeed(layer_tree(layer, source_date_epoch), mtime_clamp=source_date_epoch)
        feeds.append(feed)
        for fmt in formats:
            made[fmt].append(
                MadeLayerSource(source=feed.subscribe(LAYER_PREFIX[fmt]), created_by=layer.created_by)
            )
    if not layers.kept and not feeds:
        # An image of nothing still has a layer (an empty tar), as a squashed one has.
        # (A tree held in memory can be read again; one on disk is walked again.)
        empty = tree if tree.contents is not None else changes(None, tree.root, source_date_epoch)
        feed = LayerFeed(empty, mtime_clamp=source_date_epoch)
        feeds.append(feed)
        for fmt in formats:
            made[fmt].append(
                MadeLayerSource(source=feed.subscribe(LAYER_PREFIX[fmt]), created_by="dualbuild")
            )
    return feeds, {
        fmt: Stack(kept=layers.kept, history=layers.history, made=tuple(made[fmt])) for fmt in formats
    }


def _run_in_turn(feeds: list[LayerFeed]) -> None:
    """Produce the made layers one after the other (each emitter writes them in this order)."""
    for feed in feeds:
        feed.run()


def _run_one(
    emit: Emitter,
    fmt: Format,
    cancel: threading.Event,
    layer: Subscription | Stack,
    spec: ImageSpec,
    dest: Path,
    tap: Writable | None,
) -> tuple[Artifact, float]:
    set_cancel_event(cancel)
    start = time.monotonic()
    with logmod.prefixed(str(fmt)), logmod.timed(f"writing {dest.name}"):
        try:
            artifact = emit(layer, spec, dest, tap=tap)
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
