"""One build's artifacts checked together: found by their shared stem, every check run."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from dualbuild import gpg
from dualbuild.archive import read_aci_manifest
from dualbuild.errors import BuildError, SigningError
from dualbuild.plan import SIGNATURE_SUFFIX, SUFFIXES, ArtifactFiles
from dualbuild.recipe.model import Format
from dualbuild.verify.aci import aci_structure
from dualbuild.verify.layers import dependency_files
from dualbuild.verify.trees import verify

# How emit/acichain.py names a layer's ACI: the image's name with the layer's version label.
LAYER_ACI = re.compile(r"-layer-[0-9a-f]{64}-.*\.aci(\.asc)?$")


def find_sets(paths: list[Path]) -> list[ArtifactFiles]:
    """Group the .docker.tar and .aci files named (or found in the folders named) by stem."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.iterdir()) if path.is_dir() else [path])
    sets: dict[str, dict[Format, Path]] = {}
    for file in files:
        if LAYER_ACI.search(file.name):
            continue  # a layer of an ACI dependency chain: checked with the image ACI that depends on it
        for fmt in (Format.DOCKER, Format.ACI):
            if file.name.endswith(SUFFIXES[fmt]):
                sets.setdefault(file.name.removesuffix(SUFFIXES[fmt]), {})[fmt] = file
    found = []
    for stem, kinds in sorted(sets.items()):
        aci = kinds.get(Format.ACI)
        signature = aci.with_name(aci.name + SIGNATURE_SUFFIX) if aci is not None else None
        found.append(
            ArtifactFiles(stem=stem, docker=kinds.get(Format.DOCKER), aci=aci, aci_signature=signature)
        )
    return found


def verify_set(files: ArtifactFiles, keyring: Path | None) -> list[str]:
    """Every check of one build's artifacts; empty when all hold."""
    # Only regular files are opened: reading a FIFO (or a device) named x.aci would block forever.
    irregular = [
        f"{path.name} is not a regular file ({kind})"
        for path in (files.docker, files.aci, files.aci_signature)
        if path is not None and (kind := _irregular_kind(path)) is not None
    ]
    if irregular:
        return irregular
    problems: list[str] = []
    if files.aci is not None and files.aci_signature is not None:
        problems += _signed_aci(files.aci, files.aci_signature, keyring)
        try:
            manifest = read_aci_manifest(files.aci)
        except BuildError:
            manifest = {}  # aci_structure said why
        for _, layer in dependency_files(files.aci, manifest):
            if layer is not None:
                problems += _signed_aci(layer, layer.with_name(layer.name + SIGNATURE_SUFFIX), keyring)
    if files.docker is not None and files.aci is not None:
        problems += verify(files.docker, files.aci)
    elif files.docker is None:
        problems.append(f"no {files.stem}{SUFFIXES[Format.DOCKER]} to compare the ACI with")
    else:
        problems.append(f"no {files.stem}{SUFFIXES[Format.ACI]} to compare the Docker tarball with")
    return problems


def _signed_aci(aci: Path, signature: Path, keyring: Path | None) -> list[str]:
    """Appc's rules for one ACI, and its signature by the keyring (or the user's)."""
    problems = aci_structure(aci)
    try:
        if keyring is not None:
            gpg.verify_detached(aci, signature, keyring)
        else:
            gpg.verify_in_keyring(aci, signature)
    except SigningError as error:
        problems.append(f"signature: {error.message}")
    return problems


def _irregular_kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (after links); None for a regular or missing one."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or "unreadable"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISDIR: "a directory", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "a device")
