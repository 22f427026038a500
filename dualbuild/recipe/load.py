"""Recipe format v1: TOML → validated, frozen ``Recipe``; every mistake named with file, key, line.

The rules come from the formats the recipe feeds: appc (AC Identifier, AC Name, annotations,
environment names; ../shared/reference/appc.md §2) and Docker (repository names and tags).
"""

from __future__ import annotations

import platform
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from dualbuild.errors import Problem, RecipeError
from dualbuild.recipe.app import read_app
from dualbuild.recipe.args import effective_args, substitute_document
from dualbuild.recipe.model import (
    MAX_SOURCE_DATE_EPOCH,
    AciBase,
    AciLayering,
    Arch,
    ArchiveBase,
    ArchiveKind,
    Base,
    BootstrapBase,
    Format,
    Image,
    Layering,
    Output,
    Publish,
    Recipe,
    RegistryBase,
    RootfsBase,
    ScratchBase,
    Sign,
    Stage,
    StageBase,
)
from dualbuild.recipe.positions import KeyPath, key_lines
from dualbuild.recipe.reader import Reader, describe_value
from dualbuild.recipe.rules import (
    AC_IDENTIFIER,
    ARG_NAME,
    DOCKER_TAG,
    HTTP_URL,
    REGISTRY_REFERENCE,
    RFC3339,
    STAGE_NAME,
    check_context_path,
    is_docker_repository,
)
from dualbuild.recipe.steps import check_stage_reference, read_container_path, read_env, read_steps

TOP_KEYS = ("image", "args", "stages", "app", "output", "sign", "publish")
IMAGE_KEYS = ("name", "version", "tags", "os", "arch", "labels", "annotations")
STAGE_KEYS = ("name", "from", "workdir", "env", "steps", "tls_verify")
BOOTSTRAP_KEYS = ("bootstrap", "suite", "variant", "packages", "mirror")
OUTPUT_KEYS = ("dir", "formats", "source_date_epoch", "layers", "aci_layers")
SIGN_KEYS = ("key",)
PUBLISH_KEYS = ("docker", "aci", "aci_url")
MMDEBSTRAP_VARIANTS = (
    "extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important",
    "debootstrap", "standard",
)  # fmt: skip
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
ROOTFS_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz")
# Annotations whose values appc checks (schema/types/annotations.go).
URL_ANNOTATIONS = ("homepage", "documentation")
_MACHINE_ARCH = {
    "x86_64": Arch.AMD64, "amd64": Arch.AMD64, "aarch64": Arch.ARM64, "arm64": Arch.ARM64,
    "armv7l": Arch.ARM_V7, "armv6l": Arch.ARM_V6, "i386": Arch.I386, "i686": Arch.I386,
    "ppc64le": Arch.PPC64LE, "s390x": Arch.S390X,
}  # fmt: skip


def host_arch() -> Arch:
    """The architecture of this machine in Docker's spelling (amd64 when unknown)."""
    return _MACHINE_ARCH.get(platform.machine().lower(), Arch.AMD64)


def load_recipe(path: Path | str, build_args: Mapping[str, str] | None = None) -> Recipe:
    """Read and validate a recipe file, with ``build_args`` over its [args].

    Raises:
        RecipeError: the file is missing, not TOML, or breaks a rule; it lists every problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RecipeError(
            [Problem(file=str(path), key="", message=f"cannot read recipe: {error.strerror}")]
        ) from None
    return parse_recipe_bytes(data, path, build_args)


def parse_recipe_bytes(data: bytes, path: Path, build_args: Mapping[str, str] | None = None) -> Recipe:
    """Validate recipe bytes read from ``path`` (used for errors and the default context)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RecipeError(
            [Problem(file=str(path), key="", line=line, message="the recipe is not valid UTF-8")]
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError([_syntax_problem(str(path), error)]) from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise RecipeError(
            [Problem(file=str(path), key="", message="the recipe nests arrays or tables too deeply")]
        ) from None
    return parse_recipe_document(document, path, key_lines(text), build_args=build_args)


def _syntax_problem(file: str, error: tomllib.TOMLDecodeError) -> Problem:
    message = str(error)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    line = int(match.group(1)) if match else getattr(error, "lineno", None)
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
    if match:
        message += f" (column {match.group(2)})"
    return Problem(
        file=file,
        key="",
        line=line,
        message=f"TOML syntax error: {message}",
        hint="see https://toml.io/en/v1.0.0 for the syntax",
    )


def parse_recipe_document(
    document: dict[str, object],
    path: Path,
    lines: dict[KeyPath, int] | None = None,
    *,
    build_args: Mapping[str, str] | None = None,
) -> Recipe:
    """Validate an already-parsed TOML document, its build args substituted first.

    Raises:
        RecipeError: listing every problem found (also a --build-arg the recipe does not declare).
    """
    reader = Reader(str(path), lines or {})
    top = reader.table(document, (), TOP_KEYS, required=("image", "stages"), what="recipe")
    recipe = None
    if top is not None:
        declared = _read_args(reader, top.get("args", {}))
        args: dict[str, str] | None = None
        if declared is not None:
            args = effective_args(declared, build_args or {}, path.name)
            top = substitute_document(reader, top, args)
        recipe = _read_recipe(reader, top, path, args)
    if reader.problems or recipe is None:
        raise RecipeError(reader.problems)
    return recipe


def _read_recipe(
    reader: Reader, top: dict[str, object], path: Path, args: dict[str, str] | None
) -> Recipe | None:
    image = _read_image(reader, top["image"]) if "image" in top else None
    stages = _read_stages(reader, top["stages"]) if "stages" in top else None
    app = read_app(reader, top.get("app", {}))
    output = _read_output(reader, top.get("output", {}))
    sign = _read_sign(reader, top.get("sign", {}))
    publish = _read_publish(reader, top.get("publish", {}))
    if (
        image is None or args is None or stages is None or app is None or output is None
        or sign is None or publish is None
    ):  # fmt: skip
        return None
    return Recipe(
        path=path, image=image, stages=stages, args=args, app=app, output=output, sign=sign,
        publish=publish,
    )  # fmt: skip


def _read_image(reader: Reader, value: object) -> Image | None:
    path: KeyPath = ("image",)
    table = reader.table(value, path, IMAGE_KEYS, required=("name", "version"))
    if table is None:
        return None
    ok = len(reader.problems)
    name = _read_image_name(reader, table["name"]) if "name" in table else None
    version = (
        reader.string(
            table["version"], (*path, "version"), pattern=DOCKER_TAG, rule="a valid Docker tag",
            hint="use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')",
        )
        if "version" in table
        else None
    )  # fmt: skip
    tags = _read_tags(reader, table.get("tags", []))
    os_name = reader.string(table.get("os", "linux"), (*path, "os"))
    if os_name is not None and os_name != "linux":
        reader.error((*path, "os"), f"{os_name!r} is not supported", "only linux images can be built")
    arch = host_arch()
    if "arch" in table:
        arch_text = reader.string(table["arch"], (*path, "arch"))
        if arch_text is not None and arch_text not in Arch.__members__.values():
            reader.error(
                (*path, "arch"),
                f"{arch_text!r} is not a known architecture",
                f"use one of: {', '.join(a.value for a in Arch)}",
            )
        elif arch_text is not None:
            arch = Arch(arch_text)
    labels = reader.string_table(table.get("labels", {}), (*path, "labels"))
    annotations = _read_annotations(reader, table.get("annotations", {}))
    if len(reader.problems) > ok or name is None or version is None or tags is None:
        return None
    return Image(
        name=name, version=version, tags=tuple(tags), os="linux", arch=arch,
        labels=labels or {}, annotations=annotations or {},
    )  # fmt: skip


def _read_image_name(reader: Reader, value: object) -> str | None:
    path: KeyPath = ("image", "name")
    name = reader.string(value, path)
    if name is None:
        return None
    hint = None
    if name.lower() != name:
        hint = f"names are lowercase: try {name.lower()!r}"
    elif ":" in name or "@" in name:
        hint = "no port, tag or digest in the name; the version goes in image.version"
    if not AC_IDENTIFIER.fullmatch(name) or not is_docker_repository(name):
        reader.error(
            path,
            f"{name!r} is not a valid image name: it must be an appc AC Identifier that is also a "
            "Docker repository",
            hint or "lowercase letters and digits, separated by single '.', '-', '_' or '/'",
        )
        return None
    return name


def _read_tags(reader: Reader, value: object) -> list[str] | None:
    path: KeyPath = ("image", "tags")
    tags = reader.string_list(value, path)
    if tags is None:
        return None
    good = True
    for index, tag in enumerate(tags):
        if not DOCKER_TAG.fullmatch(tag):
            reader.error((*path, index), f"{tag!r} is not a valid Docker tag")
            good = False
        elif tags.index(tag) != index:
            reader.error((*path, index), f"tag {tag!r} is listed twice")
            good = False
    return tags if good else None


def _read_annotations(reader: Reader, value: object) -> dict[str, str] | None:
    path: KeyPath = ("image", "annotations")
    annotations = reader.string_table(
        value, path, key_pattern=AC_IDENTIFIER, key_rule="an AC Identifier",
        key_hint="annotation names are lowercase letters and digits separated by '.', '-', '_', "
        "'~' or '/' (appc); put free-form keys in image.labels",
    )  # fmt: skip
    if annotations is None:
        return None
    if "created" in annotations and not RFC3339.fullmatch(annotations["created"]):
        reader.error((*path, "created"), "must be an RFC 3339 date", "e.g. 2024-01-31T12:00:00Z")
    for key in URL_ANNOTATIONS:
        if key in annotations and not HTTP_URL.fullmatch(annotations[key]):
            reader.error((*path, key), "must be an http or https URL")
    return annotations


def _read_args(reader: Reader, value: object) -> dict[str, str] | None:
    return reader.string_table(
        value, ("args",), key_pattern=ARG_NAME, key_rule="a valid build arg name",
        key_hint="letters, digits and '_', not starting with a digit",
    )  # fmt: skip


def _read_stages(reader: Reader, value: object) -> tuple[Stage, ...] | None:
    path: KeyPath = ("stages",)
    if not isinstance(value, list) or not value:
        reader.error(
            path,
            f"expected at least one [[stages]] table, got {describe_value(value)}",
            'add [[stages]] with name and from, e.g. from = "scratch"',
        )
        return None
    ok = len(reader.problems)
    stages: list[Stage] = []
    earlier: list[str] = []
    for index, item in enumerate(value):
        stage = _read_stage(reader, item, (*path, index), earlier)
        name = stage.name if stage else _stage_name_of(item, index)
        if name in earlier:
            reader.error((*path, index, "name"), f"stage name {name!r} is used twice")
        earlier.append(name)
        if stage is not None:
            stages.append(stage)
    return tuple(stages) if len(reader.problems) == ok else None


def _stage_name_of(item: object, index: int) -> str:
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return str(item["name"])
    return f"stage{index + 1}"


def _read_stage(reader: Reader, value: object, path: KeyPath, earlier: list[str]) -> Stage | None:
    table = reader.table(value, path, STAGE_KEYS, required=("from",), what="[[stages]] table")
    if table is None:
        return None
    ok = len(reader.problems)
    name = _stage_name_of(table, int(path[-1]))
    if "name" in table:
        reader.string(
            table["name"], (*path, "name"), pattern=STAGE_NAME, rule="a valid stage name",
            hint="letters, digits, '.', '_' and '-', starting with a letter or digit",
        )  # fmt: skip
    base = _read_base(reader, table["from"], (*path, "from"), name, earlier) if "from" in table else None
    workdir = None
    if "workdir" in table:
        workdir = read_container_path(reader, table["workdir"], (*path, "workdir"))
    env = read_env(reader, table.get("env", {}), (*path, "env"))
    tls_verify = reader.boolean(table.get("tls_verify", True), (*path, "tls_verify"))
    steps = read_steps(reader, table.get("steps", []), (*path, "steps"), earlier)
    if len(reader.problems) > ok or base is None:
        return None
    return Stage(
        name=name, base=base, steps=steps or (), workdir=workdir, env=env or {},
        tls_verify=bool(tls_verify),
    )  # fmt: skip


def _read_base(reader: Reader, value: object, path: KeyPath, stage: str, earlier: list[str]) -> Base | None:
    if isinstance(value, dict):
        return _read_bootstrap(reader, value, path)
    text = reader.string(value, path, hint='e.g. from = "scratch" or from = "stage:build"')
    if text is None:
        return None
    if text == "scratch":
        return ScratchBase()
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "stage":
        if check_stage_reference(reader, rest, path, stage, earlier):
            return StageBase(stage=rest)
        return None
    if sep and prefix in ("docker-archive", "oci-archive", "rootfs", "aci"):
        if not check_context_path(reader, rest, path):
            return None
        if prefix == "rootfs":
            if not rest.endswith(ROOTFS_SUFFIXES):
                reader.error(path, f"{rest!r} is not a tarball", f"use one of: {', '.join(ROOTFS_SUFFIXES)}")
                return None
            return RootfsBase(path=rest)
        if prefix == "aci":
            return AciBase(path=rest)
        return ArchiveBase(kind=ArchiveKind(prefix), path=rest)
    if not REGISTRY_REFERENCE.fullmatch(text) or text != text.strip():
        reader.error(
            path,
            f"{text!r} is not a valid base",
            'use "scratch", "stage:NAME", "docker-archive:PATH", "oci-archive:PATH", '
            '"rootfs:PATH.tar", "aci:PATH", a registry reference like "docker.io/library/alpine:3.20", '
            'or a table { bootstrap = "debian", suite = "bookworm" }',
        )
        return None
    return RegistryBase(reference=text)


def _read_bootstrap(reader: Reader, table: dict[str, object], path: KeyPath) -> BootstrapBase | None:
    reader.table(table, path, BOOTSTRAP_KEYS, required=("bootstrap",))
    ok = len(reader.problems)
    if "bootstrap" in table and table["bootstrap"] != "debian":
        reader.error(
            (*path, "bootstrap"),
            f"{describe_value(table['bootstrap'])} is not a supported bootstrap",
            'only "debian" (made with mmdebstrap) is supported',
        )
    suite = reader.string(
        table.get("suite", "bookworm"), (*path, "suite"), pattern=re.compile(r"[a-z][a-z0-9.-]*"),
        rule="a Debian suite name",
    )  # fmt: skip
    variant = reader.string(table.get("variant", "minbase"), (*path, "variant"))
    if variant is not None and variant not in MMDEBSTRAP_VARIANTS:
        reader.error(
            (*path, "variant"), f"{variant!r} is not an mmdebstrap variant",
            f"use one of: {', '.join(MMDEBSTRAP_VARIANTS)}",
        )  # fmt: skip
    packages = reader.string_list(table.get("packages", []), (*path, "packages")) or []
    for index, package in enumerate(packages):
        if not DEBIAN_PACKAGE.fullmatch(package):
            reader.error((*path, "packages", index), f"{package!r} is not a Debian package name")
    mirror = None
    if "mirror" in table:
        mirror = reader.string(
            table["mirror"], (*path, "mirror"), pattern=HTTP_URL, rule="an http or https URL"
        )
    if len(reader.problems) > ok or suite is None or variant is None:
        return None
    return BootstrapBase(suite=suite, variant=variant, packages=tuple(packages), mirror=mirror)


def _read_output(reader: Reader, value: object) -> Output | None:
    path: KeyPath = ("output",)
    table = reader.table(value, path, OUTPUT_KEYS)
    if table is None:
        return None
    ok = len(reader.problems)
    directory = reader.string(table.get("dir", "dist"), (*path, "dir"))
    formats: list[Format] = []
    names = reader.string_list(table.get("formats", ["docker", "aci"]), (*path, "formats"), allow_empty=False)
    for index, name in enumerate(names or []):
        try:
            fmt = Format(name)
        except ValueError:
            reader.error((*path, "formats", index), f"{name!r} is not a format", "use docker, aci and/or oci")
            continue
        if fmt in formats:
            reader.error((*path, "formats", index), f"format {name!r} is listed twice")
        formats.append(fmt)
    epoch = None
    if "source_date_epoch" in table:
        epoch = reader.integer(
            table["source_date_epoch"], (*path, "source_date_epoch"), low=0, high=MAX_SOURCE_DATE_EPOCH
        )
    layers = reader.choice(table, path, "layers", Layering.STAGES)
    aci_layers = reader.choice(table, path, "aci_layers", AciLayering.SQUASH)
    if len(reader.problems) > ok or directory is None or layers is None or aci_layers is None:
        return None
    return Output(
        dir=directory, formats=tuple(formats), source_date_epoch=epoch, layers=layers, aci_layers=aci_layers
    )


def _read_sign(reader: Reader, value: object) -> Sign | None:
    table = reader.table(value, ("sign",), SIGN_KEYS)
    if table is None:
        return None
    key = reader.string(table["key"], ("sign", "key")) if "key" in table else None
    if "key" in table and key is None:
        return None
    return Sign(key=key)


def _read_publish(reader: Reader, value: object) -> Publish | None:
    path: KeyPath = ("publish",)
    table = reader.table(value, path, PUBLISH_KEYS)
    if table is None:
        return None
    ok = len(reader.problems)
    docker = aci = aci_url = None
    if "docker" in table:
        docker = reader.string(table["docker"], (*path, "docker"))
        if docker is not None and (not REGISTRY_REFERENCE.fullmatch(docker) or _has_tag(docker)):
            reader.error(
                (*path, "docker"), f"{docker!r} is not a repository reference",
                'e.g. "registry.example.com/team/hello" (no tag: version and tags come from [image])',
            )  # fmt: skip
    if "aci" in table:
        aci = reader.string(table["aci"], (*path, "aci"), hint="a directory or an http(s) URL")
    if "aci_url" in table:
        aci_url = reader.string(
            table["aci_url"], (*path, "aci_url"), pattern=HTTP_URL, rule="an http or https URL"
        )
    if len(reader.problems) > ok:
        return None
    return Publish(docker=docker, aci=aci, aci_url=aci_url)


def _has_tag(reference: str) -> bool:
    last = reference.rsplit("/", 1)[-1]
    return ":" in last or "@" in reference
