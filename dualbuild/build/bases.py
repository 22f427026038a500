"""Turning a stage's ``from`` into a working container, and what config the base brings.

Tarballs from outside (rootfs, ACI) are read as streams and checked entry by entry before
anything of an entry is extracted (see tarballs.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from dualbuild import gpg, run
from dualbuild.build.buildah import Buildah
from dualbuild.build.tarballs import extract_checked, open_tar_stream, unsafe_member_reason
from dualbuild.errors import BuildError, CommandError
from dualbuild.imageconfig import ImageConfig, from_docker_config
from dualbuild.log import log
from dualbuild.recipe.model import (
    AciBase,
    Arch,
    ArchiveBase,
    BootstrapBase,
    Port,
    Protocol,
    RootfsBase,
    Volume,
)

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


def archive_reference(base: ArchiveBase, context: Path) -> str:
    """The buildah transport reference of a docker-archive/oci-archive base."""
    return f"{base.kind}:{context_file(context, base.path, str(base.kind))}"


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


def aci_manifest_config(aci: Path) -> ImageConfig:
    """The app of an ACI as an ImageConfig, reading only up to its manifest.

    Raises:
        BuildError: the ACI has no readable manifest.
    """
    try:
        with open_tar_stream(aci) as archive:
            for member in archive:
                if member.name.rstrip("/") == "manifest" and member.isfile():
                    raw = archive.extractfile(member)
                    manifest = json.loads(raw.read()) if raw else None
                    if isinstance(manifest, dict):
                        return aci_app_config(manifest)
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise BuildError(f"ACI {aci.name} cannot be read: {error}") from None
    raise BuildError(f"ACI {aci.name}: no image manifest found")


def prepare_aci(buildah: Buildah, aci: Path, label: str) -> tuple[str, ImageConfig]:
    """A container holding an ACI's rootfs/, and its app as the inherited config.

    Raises:
        BuildError: the ACI is unreadable, has dependencies, or unsafe entries.
        SigningError: --keyring was given and its signature does not verify.
    """
    with tempfile.TemporaryDirectory(prefix="dualbuild-aci-") as scratch:
        rootfs_tar = Path(scratch) / "rootfs.tar"
        manifest = _split_aci(aci, rootfs_tar)
        if manifest.get("dependencies"):
            raise BuildError(
                f"ACI {aci.name}: it has dependencies, which dualbuild does not resolve",
                hint="flatten it first (e.g. `actool` or docker2aci squashed output), then use it as a base",
            )
        container = buildah.new_container("scratch", label=label)
        buildah.add_archive(container, rootfs_tar)
    return container, aci_app_config(manifest)


def _split_aci(aci: Path, rootfs_tar: Path) -> dict[str, object]:
    manifest: dict[str, object] | None = None
    try:
        with open_tar_stream(aci) as archive, tarfile.open(rootfs_tar, "w", format=tarfile.PAX_FORMAT) as out:
            for member in archive:
                name = member.name.rstrip("/")
                if name == "manifest" and member.isfile():
                    raw = archive.extractfile(member)
                    manifest = json.loads(raw.read()) if raw else None
                    continue
                if name == "rootfs":
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
    if not isinstance(manifest, dict) or manifest.get("acKind") != "ImageManifest":
        raise BuildError(f"ACI {aci.name}: no image manifest found")
    return manifest


def aci_app_config(manifest: dict[str, object]) -> ImageConfig:
    """Map an ACI manifest's app (and docker2aci annotations) back to an ImageConfig."""
    app = manifest.get("app")
    app = app if isinstance(app, dict) else {}
    annotations = {
        str(a.get("name")): str(a.get("value"))
        for a in manifest.get("annotations") or []  # type: ignore[attr-defined]
        if isinstance(a, dict)
    }
    exec_argv = tuple(str(x) for x in app.get("exec") or [])
    entrypoint, cmd = _docker_split(annotations, exec_argv)
    env = tuple(
        (str(e["name"]), str(e.get("value", ""))) for e in app.get("environment") or [] if isinstance(e, dict)
    )
    ports = tuple(
        Port(
            name=str(p["name"]),
            port=int(p["port"]),
            protocol=Protocol(p.get("protocol") or "tcp"),
            count=int(p.get("count") or 1),
        )
        for p in app.get("ports") or []
        if isinstance(p, dict) and p.get("protocol", "tcp") in ("tcp", "udp", "")
    )
    volumes = tuple(
        Volume(name=str(m["name"]), path=str(m["path"]), read_only=bool(m.get("readOnly", False)))
        for m in app.get("mountPoints") or []
        if isinstance(m, dict)
    )
    labels = app.get("userLabels")
    return ImageConfig(
        entrypoint=entrypoint,
        cmd=cmd,
        user=str(app["user"]) if app.get("user") else None,
        group=str(app["group"]) if app.get("group") else None,
        workdir=str(app["workingDirectory"]) if app.get("workingDirectory") else None,
        env=env,
        ports=ports,
        volumes=volumes,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def _docker_split(
    annotations: dict[str, str], exec_argv: tuple[str, ...]
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """Entrypoint and Cmd: from docker2aci's annotations when present, else exec as entrypoint."""

    def parsed(key: str) -> tuple[str, ...] | None:
        try:
            value = json.loads(annotations[key])
        except (KeyError, ValueError):
            return None
        return tuple(str(v) for v in value) if isinstance(value, list) else None

    entrypoint, cmd = parsed("appc.io/docker/entrypoint"), parsed("appc.io/docker/cmd")
    if entrypoint is None and cmd is None:
        return (exec_argv or None), None
    return entrypoint, cmd


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
    # mmdebstrap picks its output format from the name: keep ".tar" at the end.
    partial = cached.with_name(f".{os.getpid()}.partial.{cached.name}")
    argv: list[str | os.PathLike[str]] = [
        mmdebstrap, f"--variant={base.variant}", f"--architectures={DEBIAN_ARCH[arch]}",
    ]  # fmt: skip
    if base.packages:
        argv.append("--include=" + ",".join(base.packages))
    argv += [base.suite, partial]
    if base.mirror:
        argv.append(base.mirror)
    log.info("bootstrap %s: running mmdebstrap (cached afterwards in %s)", base.describe(), cached.parent)
    try:
        run.run(argv, on_line=on_line)
        partial.replace(cached)
    except CommandError as error:
        raise BuildError(f"bootstrap {base.describe()} failed\n{error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return cached


def rootfs_tarball(base: RootfsBase, context: Path) -> Path:
    """The rootfs tarball a stage starts from."""
    return context_file(context, base.path, "rootfs tarball")
