"""One keying pass per build: every stage's base resolved once and every position keyed.

Position 0 of a stage is its base; position k is the tree after step k (see cache.py for what
a key hashes). Resolving a base is where the work is: a registry base is pulled (its image id
is its identity), a file base is found in the context and hashed, a bootstrap base is made
once by mmdebstrap. The result, a :class:`KeyedPlan`, decides whether the artifacts are up to
date and then drives the build, which therefore pulls, hashes and checks nothing again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dualbuild.archive import check_one_image
from dualbuild.builder import bases
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.cache import CopyInput, Position, base_key, copy_inputs, definition, step_key
from dualbuild.builder.context import ContextCopy, ContextFilter, load_filter, select
from dualbuild.builder.secrets import read_secret, secret_digest
from dualbuild.files import file_sha256
from dualbuild.plan import BuildPlan, PlannedStage
from dualbuild.recipe.model import (
    AciBase,
    ArchiveBase,
    BootstrapBase,
    CopyStep,
    RegistryBase,
    RootfsBase,
    RunStep,
    ScratchBase,
    StageBase,
)


@dataclass(frozen=True, kw_only=True)
class KeyedStage:
    """A stage with its base resolved and every position keyed.

    Attributes:
        stage: The planned stage.
        positions: Position 0 (the base), then the tree after each step.
        image_id: The pulled image of a registry base.
        base_file: The file of an archive, rootfs, bootstrap or ACI base.
        sources: For each copy step from the context (by step number), what it reads.
    """

    stage: PlannedStage
    positions: tuple[Position, ...]
    image_id: str | None = None
    base_file: Path | None = None
    sources: Mapping[int, ContextCopy]

    @property
    def key(self) -> str:
        """The key of the stage's final tree."""
        return self.positions[-1].key


@dataclass(frozen=True, kw_only=True)
class KeyedPlan:
    """Every stage of a plan, keyed."""

    plan: BuildPlan
    stages: tuple[KeyedStage, ...]

    @property
    def final_key(self) -> str:
        """The key of the image's tree."""
        return self.stages[-1].key


def key_plan(
    plan: BuildPlan,
    buildah: Buildah,
    *,
    tls_verify: bool,
    keyring: Path | None,
    on_output: Callable[[str], None],
) -> KeyedPlan:
    """Resolve every base and key every position, stage by stage.

    Raises:
        BuildError: a base or copy source is missing or excluded, or a symlink leads out of the context.
        RecipeError: the context's ignore file has a line Docker would refuse.
        SigningError: an ACI base's signature does not verify with ``keyring``.
    """
    context_filter = None
    if any(_copies_from_context(stage) for stage in plan.stages):
        # Read only when a copy needs it: a recipe that copies nothing never trips over the file.
        # The recipe's secret files stay out even where --secret gives the secret from elsewhere.
        secret_files = [source.file for source in plan.settings.secrets.values() if source.file is not None]
        secret_files += [
            plan.settings.context / secret.src
            for stage in plan.stages
            for step in stage.steps
            if isinstance(step.step, RunStep)
            for secret in step.step.secrets
            if secret.src is not None
        ]
        context_filter = load_filter(plan.settings.context, plan.settings.out_dir, secret_files)
    keyed: dict[str, KeyedStage] = {}
    for stage in plan.stages:
        keyed[stage.name] = _key_stage(
            plan, stage, keyed, buildah, tls_verify, keyring, on_output, context_filter
        )
    return KeyedPlan(plan=plan, stages=tuple(keyed.values()))


def _key_stage(
    plan: BuildPlan,
    stage: PlannedStage,
    earlier: Mapping[str, KeyedStage],
    buildah: Buildah,
    tls_verify: bool,
    keyring: Path | None,
    on_output: Callable[[str], None],
    context_filter: ContextFilter | None,
) -> KeyedStage:
    base, context = stage.base, plan.settings.context
    image_id = base_file = None
    match base:
        case ScratchBase():
            key = base_key("scratch", "")
        case RegistryBase():
            image_id = buildah.pull(base.reference, tls_verify=stage.tls_verify and tls_verify)
            key = base_key("image", image_id)
        case ArchiveBase():
            base_file = bases.context_file(context, base.path, str(base.kind))
            check_one_image(base_file, base.kind)
            key = base_key(str(base.kind), file_sha256(base_file))
        case RootfsBase():
            base_file = bases.rootfs_tarball(base, context)
            key = base_key("rootfs", file_sha256(base_file))
        case BootstrapBase():
            arch = plan.recipe.image.arch
            base_file = bases.bootstrap_tarball(base, arch, plan.settings.cache_dir, on_output)
            key = base_key("bootstrap", base_file.name)
        case AciBase():
            base_file = bases.aci_file(base, context, keyring)
            key = base_key("aci", file_sha256(base_file))
        case StageBase():
            key = base_key("stage", earlier[base.stage].key)
    positions = [Position(key=key, parent="", definition="", inputs={})]
    sources: dict[int, ContextCopy] = {}
    for step in stage.steps:
        inputs = []
        source = None
        if isinstance(step.step, CopyStep):
            if step.step.from_stage is not None:
                source = earlier[step.step.from_stage].key
            else:
                assert context_filter is not None
                sources[step.number] = select(context_filter, step.step.sources)
                inputs = copy_inputs(context, sources[step.number].entries)
        elif isinstance(step.step, RunStep) and step.step.rebuild_on_secret_change:
            inputs = [_secret_input(plan, secret.id) for secret in step.step.secrets]
        step_definition = definition(step)
        positions.append(
            Position(
                key=step_key(positions[-1].key, step_definition, inputs, source),
                parent=positions[-1].key,
                definition=step_definition,
                inputs={i.path: f"{i.kind}:{i.mode:o}:{i.content}" for i in inputs},
            )
        )
    return KeyedStage(
        stage=stage, positions=tuple(positions), image_id=image_id, base_file=base_file, sources=sources
    )


def _secret_input(plan: BuildPlan, secret_id: str) -> CopyInput:
    """A secret as a step's input: an HMAC only this machine can make, never its bytes."""
    data = read_secret(plan.settings.secrets[secret_id], plan.settings.context, os.environ)
    return CopyInput(
        path=f"secret:{secret_id}",
        kind="secret",
        mode=0,
        content=secret_digest(plan.settings.cache_dir, data),
    )


def _copies_from_context(stage: PlannedStage) -> bool:
    return any(isinstance(s.step, CopyStep) and s.step.from_stage is None for s in stage.steps)
