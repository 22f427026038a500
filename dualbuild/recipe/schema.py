"""A JSON Schema of recipe format v1, for editors (taplo, Even Better TOML) and CI checks.

It mirrors the loader's rules where JSON Schema can say them; the loader stays the authority
(cross-references such as ``stage:NAME`` and ``${NAME}`` are only checked there).
"""

from __future__ import annotations

import re

from dualbuild.recipe.load import MMDEBSTRAP_VARIANTS
from dualbuild.recipe.model import MAX_SOURCE_DATE_EPOCH, AciLayering, Arch, Format, Layering
from dualbuild.recipe.mounts import SECRET_ID
from dualbuild.recipe.rules import (
    AC_IDENTIFIER,
    AC_NAME,
    ARG_NAME,
    DOCKER_TAG,
    ENV_NAME,
    MODE,
    OWNER,
    STAGE_NAME,
)

SCHEMA_ID = "https://dualbuild.dev/schema/recipe-v1.json"


def _pattern(regex: re.Pattern[str]) -> str:
    return "^" + regex.pattern + "$"


def _string(description: str, **extra: object) -> dict[str, object]:
    return {"type": "string", "description": description, **extra}


def _strings(description: str, **extra: object) -> dict[str, object]:
    return {"type": "array", "items": {"type": "string"}, "description": description, **extra}


def _table(
    description: str, properties: dict[str, object], required: tuple[str, ...] = ()
) -> dict[str, object]:
    schema: dict[str, object] = {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _env(description: str) -> dict[str, object]:
    return {
        "type": "object",
        "description": description,
        "propertyNames": {"pattern": _pattern(ENV_NAME)},
        "additionalProperties": {"type": "string"},
    }


_ABSOLUTE = "^(/|\\$\\{)"
_OWNER = _string('Owner of the created files as numeric "UID:GID".', pattern=_pattern(OWNER))
_MODE = _string('Permission bits as an octal string, e.g. "0644".', pattern=_pattern(MODE))
_WORKDIR = _string("Working directory inside the image for this step (absolute).", pattern=_ABSOLUTE)

_STEP_VARIANTS: list[dict[str, object]] = [
    _table(
        "Run a command in the stage's container.",
        {
            "run": {
                "description": "A string runs under /bin/sh -c; an array runs as argv, no shell.",
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ],
            },
            "user": _string('User to run as: a name, "UID" or "UID:GID".'),
            "workdir": _WORKDIR,
            "env": _env("Environment of this step, on top of the args and the stage env."),
            "network": _string(
                "Network of the command: private (its own namespace; reaches the outside, not the host's"
                " loopback), host, or none (loopback only).",
                enum=["private", "host", "none"],
                default="private",
            ),
            "secrets": {
                "type": "array",
                "description": "Secrets this step reads as files (mode 0400, on a mount that never reaches a"
                " layer, a cache key, a log or the report); --secret id=ID,src=FILE|env=VAR overrides.",
                "items": _table(
                    "One secret.",
                    {
                        "id": _string("Its name: the file /run/secrets/ID.", pattern=_pattern(SECRET_ID)),
                        "src": _string("A file in the build context holding it."),
                        "env": _string("A variable of dualbuild's environment holding it."),
                        "target": _string(
                            "Where the step finds it instead of /run/secrets/ID.", pattern=_ABSOLUTE
                        ),
                    },
                    ("id",),
                ),
            },
            "cache": {
                "type": "array",
                "description": "Directories kept between builds on this machine, mounted for this step only;"
                " never in a layer or a cache key (dualbuild cache ls / prune).",
                "items": {
                    "oneOf": [
                        _string("The directory in the container.", pattern=_ABSOLUTE),
                        _table(
                            "One cache directory.",
                            {
                                "target": _string("The directory in the container.", pattern=_ABSOLUTE),
                                "id": _string("Its name on this machine (default: the target and the arch)."),
                                "sharing": _string(
                                    "shared: builds at once use it together; locked: one at a time.",
                                    enum=["shared", "locked"],
                                    default="shared",
                                ),
                            },
                            ("target",),
                        ),
                    ]
                },
            },
            "rebuild_on_secret_change": {
                "type": "boolean",
                "description": "Run the step again when a secret changes (keyed by a digest only this"
                " machine can make, never the secret).",
                "default": False,
            },
        },
        ("run",),
    ),
    _table(
        "Copy files from the build context or another stage.",
        {
            "copy": {
                "description": "Source paths: relative to the build context, or absolute in the stage named by `from`.",
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ],
            },
            "to": _string(
                "Destination in the image; a trailing / means a directory (Docker COPY semantics)."
            ),
            "from": _string("Copy from this earlier stage's tree instead of the build context."),
            "owner": _OWNER,
            "mode": _MODE,
            "workdir": _WORKDIR,
        },
        ("copy", "to"),
    ),
    _table(
        "Write a file with inline content.",
        {
            "write": _string("Path of the file in the image."),
            "content": _string("The file's content; ${NAME} is substituted."),
            "mode": _MODE,
            "owner": _OWNER,
            "workdir": _WORKDIR,
        },
        ("write", "content"),
    ),
    _table(
        "Create a directory.",
        {
            "mkdir": _string("Path of the directory in the image."),
            "parents": {"type": "boolean", "description": "Create missing parents too.", "default": True},
            "owner": _OWNER,
            "mode": _MODE,
            "workdir": _WORKDIR,
        },
        ("mkdir",),
    ),
    _table(
        "Create a symbolic link.",
        {
            "symlink": _string("Path of the link in the image."),
            "target": _string("What the link points to."),
            "workdir": _WORKDIR,
        },
        ("symlink", "target"),
    ),
    _table(
        "Remove paths recursively; a missing path is an error, a pattern matching nothing is not.",
        {
            "remove": {
                "description": "Path or paths to remove; *, ?, [...] and ** patterns are expanded in the image.",
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ],
            },
            "workdir": _WORKDIR,
        },
        ("remove",),
    ),
]

_BOOTSTRAP = _table(
    "A Debian root filesystem made with mmdebstrap, cached by its parameters.",
    {
        "bootstrap": _string("The distribution to bootstrap.", enum=["debian"]),
        "suite": _string("Debian suite, e.g. bookworm.", default="bookworm"),
        "variant": _string("mmdebstrap variant.", enum=list(MMDEBSTRAP_VARIANTS), default="minbase"),
        "packages": _strings("Extra packages to install."),
        "mirror": _string("Debian mirror URL (default: the host's apt sources)."),
    },
    ("bootstrap",),
)

_STAGE = _table(
    "A build stage. The last stage is the image.",
    {
        "name": _string("Name of the stage, for stage:NAME and copy `from`.", pattern=_pattern(STAGE_NAME)),
        "from": {
            "description": 'The base: "scratch", "stage:NAME", "docker-archive:PATH", "oci-archive:PATH", '
            '"rootfs:PATH.tar[.gz|.zst|.xz]", "aci:PATH", a registry reference, or a bootstrap table.',
            "oneOf": [{"type": "string", "minLength": 1}, _BOOTSTRAP],
        },
        "workdir": _string("Default working directory of this stage's steps (absolute).", pattern=_ABSOLUTE),
        "env": _env("Default environment of this stage's run steps."),
        "tls_verify": {
            "type": "boolean",
            "description": "Verify TLS when pulling a registry base.",
            "default": True,
        },
        "steps": {
            "type": "array",
            "description": "The steps, run in order.",
            "items": {"oneOf": _STEP_VARIANTS},
        },
    },
    ("from",),
)

_APP = _table(
    "The runtime config, mapped to the Docker config and the ACI app.",
    {
        "entrypoint": _strings("Entrypoint argv (ACI exec = entrypoint + cmd)."),
        "cmd": _strings("Default arguments (Docker Cmd)."),
        "user": {
            "type": ["string", "integer"],
            "description": "User name or number; names are resolved through the image's /etc/passwd for the ACI.",
        },
        "group": {
            "type": ["string", "integer"],
            "description": "Group name or number; names are resolved through the image's /etc/group for the ACI.",
        },
        "workdir": _string("Working directory of the app (absolute).", pattern="^/"),
        "env": _env("Environment of the app."),
        "ports": {
            "type": "array",
            "description": "Ports the app listens on.",
            "items": _table(
                "A port.",
                {
                    "name": _string(
                        "AC Name of the port (rkt run --port=NAME:HOSTPORT).", pattern=_pattern(AC_NAME)
                    ),
                    "port": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 65535,
                        "description": "Port number.",
                    },
                    "protocol": _string("Protocol.", enum=["tcp", "udp"], default="tcp"),
                    "count": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Number of consecutive ports (ACI).",
                        "default": 1,
                    },
                },
                ("name", "port"),
            ),
        },
        "volumes": {
            "type": "array",
            "description": "Paths holding the app's data.",
            "items": _table(
                "A volume.",
                {
                    "name": _string("AC Name of the mount point.", pattern=_pattern(AC_NAME)),
                    "path": _string("Absolute path in the image.", pattern="^/"),
                    "read_only": {
                        "type": "boolean",
                        "description": "Mounted read-only (ACI).",
                        "default": False,
                    },
                },
                ("name", "path"),
            ),
        },
        "stop_signal": _string(
            "Signal that stops the app, e.g. SIGTERM (Docker only; the ACI has no field)."
        ),
        "healthcheck": _table(
            "Docker healthcheck (Docker only).",
            {
                "cmd": {
                    "description": "Command: an argv array (CMD) or a string (CMD-SHELL).",
                    "oneOf": [
                        {"type": "string", "minLength": 1},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    ],
                },
                "interval": _string('Time between checks, e.g. "30s".'),
                "timeout": _string('Time a check may take, e.g. "5s".'),
                "start_period": _string('Grace period after start, e.g. "10s".'),
                "retries": {"type": "integer", "minimum": 0, "description": "Failures before unhealthy."},
            },
            ("cmd",),
        ),
    },
)

RECIPE_SCHEMA: dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "dualbuild recipe (format v1)",
    "description": "One source for a Docker image tarball and a signed appc ACI.",
    **_table(
        "A dualbuild recipe.",
        {
            "image": _table(
                "Identity of the image.",
                {
                    "name": _string(
                        "ACI name (AC Identifier) and Docker repository, e.g. example.com/hello.",
                        pattern=_pattern(AC_IDENTIFIER),
                    ),
                    "version": _string("Docker tag and ACI version label.", pattern=_pattern(DOCKER_TAG)),
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "pattern": _pattern(DOCKER_TAG)},
                        "uniqueItems": True,
                        "description": "Extra Docker tags.",
                    },
                    "os": _string("Operating system.", enum=["linux"], default="linux"),
                    "arch": _string(
                        "Architecture in Docker spelling; default: the host's.", enum=[a.value for a in Arch]
                    ),
                    "labels": {
                        "type": "object",
                        "description": "Docker Labels and ACI userLabels.",
                        "additionalProperties": {"type": "string"},
                    },
                    "annotations": {
                        "type": "object",
                        "description": "ACI annotations and OCI manifest annotations (names are AC Identifiers).",
                        "propertyNames": {"pattern": _pattern(AC_IDENTIFIER)},
                        "additionalProperties": {"type": "string"},
                    },
                },
                ("name", "version"),
            ),
            "args": {
                "type": "object",
                "description": "Build args: ${NAME} in step strings, and env of run steps; --build-arg overrides.",
                "propertyNames": {"pattern": _pattern(ARG_NAME)},
                "additionalProperties": {"type": "string"},
            },
            "stages": {
                "type": "array",
                "minItems": 1,
                "description": "Build stages, in order.",
                "items": _STAGE,
            },
            "app": _APP,
            "output": _table(
                "Where the artifacts go.",
                {
                    "dir": _string(
                        "Output directory, relative to the recipe; --out overrides.", default="dist"
                    ),
                    "formats": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": True,
                        "items": {"type": "string", "enum": [f.value for f in Format]},
                        "description": "Formats to write.",
                        "default": ["docker", "aci"],
                    },
                    "source_date_epoch": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_SOURCE_DATE_EPOCH,
                        "description": "Timestamp of every entry and of `created`; else $SOURCE_DATE_EPOCH, else 0.",
                    },
                    "layers": {
                        "type": "string",
                        "enum": [layering.value for layering in Layering],
                        "default": Layering.STAGES.value,
                        "description": "Docker/OCI layers: the base's own, then one per stage of the final"
                        " stage's `from` chain (stages), one per step (steps), or one for the whole tree (squash).",
                    },
                    "aci_layers": {
                        "type": "string",
                        "enum": [layering.value for layering in AciLayering],
                        "default": AciLayering.SQUASH.value,
                        "description": "One ACI of the whole tree (squash), or one signed ACI per image layer"
                        " that the image ACI depends on (dependencies).",
                    },
                },
            ),
            "sign": _table(
                "ACI signing.",
                {
                    "key": _string(
                        "gpg key (fingerprint, id or user id); --sign-key and $DUALBUILD_SIGN_KEY override."
                    )
                },
            ),
            "publish": _table(
                "Where `dualbuild publish` sends the artifacts.",
                {
                    "docker": _string("Registry repository for version and tags."),
                    "aci": _string("ACI discovery site: a directory or an http(s) URL taking PUT."),
                    "aci_url": _string(
                        "Public root of the ACI site (default https:// + the name's host).",
                        pattern="^https?://",
                    ),
                },
            ),
        },
        ("image", "stages"),
    ),
}
