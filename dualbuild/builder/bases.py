"""Turning a stage's ``from`` into a working container, and what config the base brings.

Tarballs from outside (rootfs, ACI) are read as streams and checked entry by entry before
anything of an entry is extracted (see tarballs.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from dualbuild import gpg, run
from dualbuild.archive import ACI_MANIFEST, open_tar_stream, read_aci_manifest
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.tarballs import extract_checked, unsafe_member_reason
from dualbuild.errors import BuildError, CommandError
from dualbuild.files import atomic_path, scratch_directory
from dualbuild.imageconfig import ImageConfig, from_aci_manifest, from_docker_config
from dualbuild.log import log
from dualbuild.recipe.model import AciBase, Arch, BootstrapBase, RootfsBase

# Docker architecture → Debian architecture, for mmdebstrap.
DEBIAN_ARCH = {
    Arch.AMD64: "amd64", Arch.ARM64: "arm64", Arch.ARM_V7: "armhf", Arch.ARM_V6: "armel",
    Arch.I386: "i386", Arch.PPC64LE: "ppc64el", Arch.S390X: "s390x",
}  # fmt: skip


def context_file(context: Path, relative: str, what: str) -> Path:
    """A file named by the recipe inside the build context, which must exist and stay inside.

    Raises:
        BuildError: it is missing or resolves outside the context (through a symlink).
    """
    path = context / relative
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(context)):
        raise BuildError(f"{what} {relative!r} resolves outside the build context ({real})")
    if not real.is_file():
        raise BuildError(
            f"{what} {relative!r} not found in the build context {context}",
            hint="paths are relative to the recipe's folder, or to --context",
        )
    return real


def prepare_rootfs(buildah: Buildah, tarball: Path, label: str) -> str:
    """A container holding the tarball's files on an empty root, every entry checked first.

    The container is registered with ``buildah`` before anything is extracted, so its
    cleanup removes it whether extraction succeeds, fails or is interrupted.

    Raises:
        BuildError: an entry would land outside the root, the tarball is unreadable, or tar failed.
    """
    container = buildah.new_container("scratch", label=label)
    extract_checked(tarball, buildah.mount(container), "rootfs tarball")
    return container


def raw_image_config(buildah: Buildah, container: str) -> dict[str, object]:
    """The Docker/OCI ``config`` object a container inherited from its image."""
    data = buildah.inspect(container)
    oci = data.get("OCIv1")
    config = oci.get("config") if isinstance(oci, dict) else None
    return config if isinstance(config, dict) else {}


def image_config_of(buildah: Buildah, container: str) -> ImageConfig:
    """The config a container inherited from its image (Env, Entrypoint, User, ...)."""
    return from_docker_config(raw_image_config(buildah, container))


# --- ACI bases -------------------------------------------------------------------------------


def aci_file(base: AciBase, context: Path, keyring: Path | None) -> Path:
    """The ACI a stage starts from, its signature checked when a keyring is given.

    Raises:
        BuildError: the file is missing.
        SigningError: the signature does not verify with the keyring.
    """
    aci = context_file(context, base.path, "ACI")
    if keyring is not None:
        fingerprint = gpg.verify_detached(aci, aci.with_name(aci.name + ".asc"), keyring)
        log.info("ACI %s: signature good (key %s)", aci.name, fingerprint)
    return aci


def aci_base_config(aci: Path) -> ImageConfig:
    """The app of an ACI as an ImageConfig, reading only up to its manifest.

    Raises:
        BuildError: the ACI has no readable manifest.
    """
    return from_aci_manifest(read_aci_manifest(aci), f"ACI {aci.name}")


def prepare_aci(buildah: Buildah, aci: Path, label: str) -> tuple[str, ImageConfig]:
    """A container holding an ACI's rootfs/, and its app as the inherited config.

    Raises:
        BuildError: the ACI is unreadable, has dependencies, or unsafe entries.
    """
    manifest = read_aci_manifest(aci)
    if manifest.get("dependencies"):
        raise BuildError(
            f"ACI {aci.name}: it has dependencies, which dualbuild does not resolve",
            hint="flatten it first (e.g. `actool` or docker2aci squashed output), then use it as a base",
        )
    config = from_aci_manifest(manifest, f"ACI {aci.name}")  # checked before anything is extracted
    with scratch_directory("acibase") as scratch:
        rootfs_tar = scratch / "rootfs.tar"
        _rootfs_of(aci, rootfs_tar)
        container = buildah.new_container("scratch", label=label)
        buildah.add_archive(container, rootfs_tar)
    return container, config


def _rootfs_of(aci: Path, rootfs_tar: Path) -> None:
    """Write the ACI's rootfs/ as a plain tarball of its own, every entry checked."""
    try:
        with open_tar_stream(aci) as archive, tarfile.open(rootfs_tar, "w", format=tarfile.PAX_FORMAT) as out:
            for member in archive:
                name = member.name.rstrip("/")
                if name in (ACI_MANIFEST, "rootfs"):
                    continue
                if not name.startswith("rootfs/"):
                    raise BuildError(f"ACI {aci.name}: entry {member.name!r} is outside rootfs/")
                member.name = name.removeprefix("rootfs/")
                if member.islnk():
                    member.linkname = member.linkname.removeprefix("rootfs/")
                reason = unsafe_member_reason(member.name, member)
                if reason:
                    raise BuildError(f"ACI {aci.name}: entry {member.name!r} has {reason}; refusing it")
                out.addfile(member, archive.extractfile(member) if member.isfile() else None)
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise BuildError(f"ACI {aci.name} cannot be read: {error}") from None


# --- debian bootstrap bases ------------------------------------------------------------------


def bootstrap_tarball(
    base: BootstrapBase, arch: Arch, cache_dir: Path, on_line: Callable[[str], None]
) -> Path:
    """The mmdebstrap tarball for these parameters, made once and then taken from the cache."""
    params = {
        "distribution": base.distribution, "suite": base.suite, "variant": base.variant,
        "packages": sorted(base.packages), "mirror": base.mirror, "arch": DEBIAN_ARCH[arch],
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
    cached = cache_dir / "bootstrap" / f"{base.suite}-{base.variant}-{key}.tar"
    if cached.exists():
        log.info("bootstrap %s: cached (%s)", base.describe(), cached)
        return cached
    mmdebstrap = run.find_tool("mmdebstrap", "bootstrap a Debian base")
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("bootstrap %s: running mmdebstrap (cached afterwards in %s)", base.describe(), cached.parent)
    # The temporary name keeps ".tar" at the end: mmdebstrap picks its output format from it.
    with atomic_path(cached) as partial:
        argv: list[str | os.PathLike[str]] = [
            mmdebstrap, f"--variant={base.variant}", f"--architectures={DEBIAN_ARCH[arch]}",
        ]  # fmt: skip
        if base.packages:
            argv.append("--include=" + ",".join(base.packages))
        argv += [base.suite, partial]
        if base.mirror:
            argv.append(base.mirror)
        try:
            run.run(argv, on_line=on_line)
        except CommandError as error:
            raise BuildError(f"bootstrap {base.describe()} failed\n{error}") from None
    return cached


def rootfs_tarball(base: RootfsBase, context: Path) -> Path:
    """The rootfs tarball a stage starts from."""
    return context_file(context, base.path, "rootfs tarball")
