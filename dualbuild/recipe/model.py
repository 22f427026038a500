"""The recipe as typed, frozen values: what the loader produces and every later step reads."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RECIPE_VERSION = 1

# Used when neither the recipe nor $SOURCE_DATE_EPOCH sets one: the Unix epoch, as ko and apko
# do, so an unconfigured build is still reproducible.
DEFAULT_SOURCE_DATE_EPOCH = 0
# The latest epoch every format carries: a ustar header's mtime is 11 octal digits
# (2242-03-16T12:56:31Z); later ones would need PAX records, and past year 9999 no RFC 3339
# `created` can say them. Refused at validation, from the recipe and $SOURCE_DATE_EPOCH alike.
MAX_SOURCE_DATE_EPOCH = 8**11 - 1


class Arch(enum.StrEnum):
    """Architectures in Docker's spelling; mapped to appc names for the ACI."""

    AMD64 = "amd64"
    ARM64 = "arm64"
    ARM_V7 = "arm/v7"
    ARM_V6 = "arm/v6"
    I386 = "386"
    PPC64LE = "ppc64le"
    S390X = "s390x"

    @property
    def docker_architecture(self) -> str:
        """The ``architecture`` field of a Docker/OCI config."""
        return self.value.split("/")[0]

    @property
    def docker_variant(self) -> str | None:
        """The ``variant`` field of a Docker/OCI config, if any."""
        _, _, variant = self.value.partition("/")
        return variant or None

    @property
    def appc(self) -> str:
        """The appc ``arch`` label (appc labels.go ToAppcOSArch)."""
        return _APPC_ARCH[self]

    @property
    def file_part(self) -> str:
        """How the architecture appears in output file names (no slash)."""
        return self.value.replace("/", "")


_APPC_ARCH = {
    Arch.AMD64: "amd64",
    Arch.ARM64: "aarch64",
    Arch.ARM_V7: "armv7l",
    Arch.ARM_V6: "armv6l",
    Arch.I386: "i386",
    Arch.PPC64LE: "ppc64le",
    Arch.S390X: "s390x",
}


class Format(enum.StrEnum):
    """Output formats."""

    DOCKER = "docker"
    ACI = "aci"
    OCI = "oci"


class Protocol(enum.StrEnum):
    """Port protocols."""

    TCP = "tcp"
    UDP = "udp"


class Network(enum.StrEnum):
    """Network modes of a run step."""

    PRIVATE = "private"
    HOST = "host"
    NONE = "none"


class Layering(enum.StrEnum):
    """How the Docker and OCI images are cut into layers."""

    # One layer of the whole tree (format v1's only output).
    SQUASH = "squash"
    # The base image's own layers, then one per stage of the final stage's `from` chain.
    STAGES = "stages"
    # The base image's own layers, then one per step of those stages.
    STEPS = "steps"


class AciLayering(enum.StrEnum):
    """How the ACI holds the tree."""

    # One ACI holding the whole tree.
    SQUASH = "squash"
    # One signed ACI per image layer; the image ACI depends on them in layer order.
    DEPENDENCIES = "dependencies"


class CacheSharing(enum.StrEnum):
    """How builds running at once use one cache mount."""

    SHARED = "shared"
    LOCKED = "locked"


# Where a secret is mounted when its step names no target (BuildKit's and buildah's place).
SECRETS_DIR = "/run/secrets"


@dataclass(frozen=True, kw_only=True)
class SecretMount:
    """A secret a run step reads as a file, on a mount that never reaches the tree.

    ``src`` (a file in the build context) or ``env`` (a variable of dualbuild's environment)
    says where it comes from in the recipe; ``--secret`` may say otherwise. ``key`` and
    ``line`` say where the recipe names it, for errors found when the build starts.
    """

    id: str
    src: str | None = None
    env: str | None = None
    target: str | None = None
    key: str = field(default="", compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def path(self) -> str:
        """Where the step finds it."""
        return self.target or f"{SECRETS_DIR}/{self.id}"


@dataclass(frozen=True, kw_only=True)
class CacheMount:
    """A directory kept between builds on this machine, mounted at ``target`` for one run step."""

    target: str
    id: str | None = None
    sharing: CacheSharing = CacheSharing.SHARED


class ArchiveKind(enum.StrEnum):
    """Image archives a stage can start from."""

    DOCKER_ARCHIVE = "docker-archive"
    OCI_ARCHIVE = "oci-archive"


# --- bases -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScratchBase:
    """An empty root filesystem."""

    def describe(self) -> str:
        """How the base reads in a plan."""
        return "scratch"


@dataclass(frozen=True, kw_only=True)
class RegistryBase:
    """An image in a registry, pulled by buildah."""

    reference: str

    def describe(self) -> str:
        """How the base reads in a plan."""
        return self.reference


@dataclass(frozen=True, kw_only=True)
class ArchiveBase:
    """A docker-archive or oci-archive file in the build context."""

    kind: ArchiveKind
    path: str

    def describe(self) -> str:
        """How the base reads in a plan."""
        return f"{self.kind}:{self.path}"


@dataclass(frozen=True, kw_only=True)
class RootfsBase:
    """A root filesystem tarball in the build context, extracted into an empty container."""

    path: str

    def describe(self) -> str:
        """How the base reads in a plan."""
        return f"rootfs:{self.path}"


@dataclass(frozen=True, kw_only=True)
class AciBase:
    """An appc ACI in the build context: its rootfs/ and its app."""

    path: str

    def describe(self) -> str:
        """How the base reads in a plan."""
        return f"aci:{self.path}"


@dataclass(frozen=True, kw_only=True)
class StageBase:
    """The tree of an earlier stage."""

    stage: str

    def describe(self) -> str:
        """How the base reads in a plan."""
        return f"stage:{self.stage}"


@dataclass(frozen=True, kw_only=True)
class BootstrapBase:
    """A Debian root filesystem made with mmdebstrap."""

    distribution: str = "debian"
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    mirror: str | None = None

    def describe(self) -> str:
        """How the base reads in a plan."""
        extra = f" +{','.join(self.packages)}" if self.packages else ""
        return f"bootstrap {self.distribution} {self.suite} ({self.variant}){extra}"


Base = ScratchBase | RegistryBase | ArchiveBase | RootfsBase | AciBase | StageBase | BootstrapBase

# --- steps -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunStep:
    """Run a command in the stage's container: a string under /bin/sh -c, a list as argv."""

    command: str | tuple[str, ...]
    user: str | None = None
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    network: Network = Network.PRIVATE
    secrets: tuple[SecretMount, ...] = ()
    cache: tuple[CacheMount, ...] = ()
    # A changed secret reruns the step (keyed by a digest only this machine can make).
    rebuild_on_secret_change: bool = False

    @property
    def action(self) -> str:
        """The step's action keyword."""
        return "run"


@dataclass(frozen=True, kw_only=True)
class CopyStep:
    """Copy files from the build context or another stage into the stage's tree."""

    sources: tuple[str, ...]
    to: str
    from_stage: str | None = None
    owner: str | None = None
    mode: int | None = None
    workdir: str | None = None

    @property
    def action(self) -> str:
        """The step's action keyword."""
        return "copy"


@dataclass(frozen=True, kw_only=True)
class WriteStep:
    """Write a file with inline content."""

    path: str
    content: str
    mode: int = 0o644
    owner: str | None = None
    workdir: str | None = None

    @property
    def action(self) -> str:
        """The step's action keyword."""
        return "write"


@dataclass(frozen=True, kw_only=True)
class MkdirStep:
    """Create a directory."""

    path: str
    parents: bool = True
    owner: str | None = None
    mode: int = 0o755
    workdir: str | None = None

    @property
    def action(self) -> str:
        """The step's action keyword."""
        return "mkdir"


@dataclass(frozen=True, kw_only=True)
class SymlinkStep:
    """Create a symbolic link."""

    path: str
    target: str
    workdir: str | None = None

    @property
    def action(self) -> str:
        """The step's action keyword."""
        return "symlink"


@dataclass(frozen=True, kw_only=True)
class RemoveStep:
    """Remove paths, recursively; a missing path is an error, a pattern (``*``…) matching nothing is not."""

    paths: tuple[str, ...]
    workdir: str | None = None

    @property
    def action(self) -> str:
        """The step's action keyword."""
        return "remove"


Step = RunStep | CopyStep | WriteStep | MkdirStep | SymlinkStep | RemoveStep

# --- the recipe ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One build stage: a base and the steps run on it."""

    name: str
    base: Base
    steps: tuple[Step, ...] = ()
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    tls_verify: bool = True


@dataclass(frozen=True, kw_only=True)
class Image:
    """Identity of the image: name, version, tags, platform, labels, annotations."""

    name: str
    version: str
    tags: tuple[str, ...] = ()
    os: str = "linux"
    arch: Arch = Arch.AMD64
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        """The last segment of the name, used for output file names."""
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True, kw_only=True)
class Port:
    """A port the app listens on."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    count: int = 1


@dataclass(frozen=True, kw_only=True)
class Volume:
    """A path the app keeps its data in."""

    name: str
    path: str
    read_only: bool = False


@dataclass(frozen=True, kw_only=True)
class Healthcheck:
    """A Docker healthcheck; durations in nanoseconds as Docker stores them."""

    cmd: tuple[str, ...]
    shell: bool = False
    interval_ns: int | None = None
    timeout_ns: int | None = None
    start_period_ns: int | None = None
    retries: int | None = None


@dataclass(frozen=True, kw_only=True)
class App:
    """The runtime config; a None field is inherited from the base image."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str | None = None
    group: str | None = None
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    volumes: tuple[Volume, ...] = ()
    stop_signal: str | None = None
    healthcheck: Healthcheck | None = None


@dataclass(frozen=True, kw_only=True)
class Output:
    """Where the artifacts go and how."""

    dir: str = "dist"
    formats: tuple[Format, ...] = (Format.DOCKER, Format.ACI)
    source_date_epoch: int | None = None
    layers: Layering = Layering.STAGES
    aci_layers: AciLayering = AciLayering.SQUASH

    @property
    def chained_aci(self) -> bool:
        """Whether the ACI is a dependency chain of the image's layers (it is written, and asked so)."""
        return self.aci_layers is AciLayering.DEPENDENCIES and Format.ACI in self.formats


@dataclass(frozen=True, kw_only=True)
class Sign:
    """How the ACI is signed."""

    key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Publish:
    """Where `dualbuild publish` sends the artifacts."""

    docker: str | None = None
    aci: str | None = None
    aci_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A validated recipe (format v1)."""

    path: Path
    image: Image
    stages: tuple[Stage, ...]
    args: Mapping[str, str] = field(default_factory=dict)
    app: App = field(default_factory=App)
    output: Output = field(default_factory=Output)
    sign: Sign = field(default_factory=Sign)
    publish: Publish = field(default_factory=Publish)

    @property
    def final_stage(self) -> Stage:
        """The last stage: its tree is the image."""
        return self.stages[-1]
