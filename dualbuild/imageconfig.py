"""The runtime config of the built image: inherited from the base, overridden by [app].

This is what the build hands to the emitters together with the tree; the emitters map it to a
Docker/OCI config and an ACI app (../shared/DESIGN.md, "One config, three formats"). Read here
from what a base brings (a Docker/OCI config, an ACI manifest), and told here what each format
cannot carry (:func:`lost_fields`), so ``plan`` and the emitters say it in the same words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dualbuild.errors import BuildError
from dualbuild.recipe.model import App, Format, Healthcheck, Port, Protocol, Volume
from dualbuild.recipe.rules import ENV_NAME, ENV_NAME_BEFORE_0_8_11

# How warnings name each format's file.
FORMAT_NOUNS = {Format.DOCKER: "the Docker archive", Format.OCI: "the OCI archive", Format.ACI: "the ACI"}


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """Entrypoint, user, env, ports, ... of the final image, format-neutral."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str | None = None
    group: str | None = None
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    volumes: tuple[Volume, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    healthcheck: Healthcheck | None = None

    @property
    def docker_user(self) -> str:
        """Docker's ``User``: ``user``, ``user:group`` or empty."""
        if self.user and self.group:
            return f"{self.user}:{self.group}"
        return self.user or ""


def _sanitize_ac_name(text: str) -> str:
    """Sanitize like appc SanitizeACName: lowercase, others → '-', no edge '-' (as docker2aci names ports)."""
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"


def from_docker_config(config: Mapping[str, object]) -> ImageConfig:
    """Read the ``config`` object of a Docker/OCI image config (what a base image carries)."""

    def strings(key: str) -> tuple[str, ...] | None:
        value = config.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(str(v) for v in value)
        return None

    def text(key: str) -> str | None:
        value = config.get(key)
        return value if isinstance(value, str) and value else None

    user = text("User")
    group = None
    if user and ":" in user:
        user, _, group = user.partition(":")
    env: list[tuple[str, str]] = []
    for item in strings("Env") or ():
        name, _, value = item.partition("=")
        env.append((name, value))
    ports = []
    exposed = config.get("ExposedPorts")
    for spec in sorted(exposed) if isinstance(exposed, dict) else []:
        number, _, proto = str(spec).partition("/")
        if number.isdigit() and proto in ("", "tcp", "udp"):
            protocol = Protocol(proto or "tcp")
            ports.append(
                Port(name=_sanitize_ac_name(f"{number}-{protocol}"), port=int(number), protocol=protocol)
            )
    volumes = []
    declared = config.get("Volumes")
    for path in sorted(declared) if isinstance(declared, dict) else []:
        volumes.append(Volume(name=_sanitize_ac_name(f"volume-{path}"), path=str(path)))
    labels = config.get("Labels")
    return ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        user=user or None,
        group=group or None,
        workdir=text("WorkingDir"),
        env=tuple(env),
        ports=tuple(ports),
        volumes=tuple(volumes),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        stop_signal=text("StopSignal"),
    )


def apply_app(base: ImageConfig, app: App, labels: Mapping[str, str]) -> ImageConfig:
    """Override the inherited config with the recipe's [app] and image.labels.

    Docker semantics: setting ``entrypoint`` resets an inherited ``cmd`` (as a Dockerfile
    ENTRYPOINT does) unless the recipe sets ``cmd`` too. Env and labels merge by name; env
    values expand ``$NAME`` against the env so far, as Dockerfile ENV does.
    """
    env = dict(base.env)
    for name, value in app.env.items():
        # A base that sets no PATH (scratch, a rootfs) runs with the runtimes' default one.
        env[name] = expand_env(value, {"PATH": DEFAULT_PATH, **env})
    cmd = base.cmd
    if app.entrypoint is not None:
        cmd = None
    if app.cmd is not None:
        cmd = app.cmd
    return ImageConfig(
        entrypoint=app.entrypoint if app.entrypoint is not None else base.entrypoint,
        cmd=cmd,
        user=app.user if app.user is not None else base.user,
        group=app.group if app.group is not None else (base.group if app.user is None else None),
        workdir=app.workdir or base.workdir,
        env=tuple(env.items()),
        ports=app.ports or base.ports,
        volumes=app.volumes or base.volumes,
        labels={**base.labels, **labels},
        stop_signal=app.stop_signal or base.stop_signal,
        healthcheck=app.healthcheck or base.healthcheck,
    )


# What Docker and runc use when an image sets no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Dockerfile ENV's word expansion: \$ escapes, $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word}.
_ENV_REFERENCE = re.compile(
    r"\\(\$)|\$([A-Za-z_][A-Za-z0-9_]*)|\$\{([A-Za-z_][A-Za-z0-9_.-]*)(?::([-+])([^}]*))?\}"
)


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """``value`` with ``$NAME`` and ``${NAME}`` replaced from ``env`` (unset: empty), as Docker's ENV."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        if match.group(2):
            return env.get(match.group(2), "")
        name, operator, word = match.group(3), match.group(4), match.group(5)
        current = env.get(name, "")
        if operator == "-":
            return current or word
        if operator == "+":
            return word if current else ""
        return current

    return _ENV_REFERENCE.sub(replace, value)


def from_aci_manifest(manifest: Mapping[str, object], source: str = "the ACI") -> ImageConfig:
    """Map an ACI manifest's app (and docker2aci's annotations) back to an ImageConfig.

    Raises:
        BuildError: a field of the app is not what the appc schema says (named, with ``source``).
    """
    fields = _AciFields(source)
    app = manifest.get("app")
    if app is None:
        app = {}
    if not isinstance(app, dict):
        raise fields.wrong("app", "an object", app)
    annotations = {
        fields.text(a, "name", f"annotations[{i}]"): fields.text(a, "value", f"annotations[{i}]", default="")
        for i, a in enumerate(fields.objects(manifest, "annotations"))
    }
    exec_argv = fields.strings(app, "exec", "app")
    entrypoint, cmd = _docker_split(annotations, exec_argv)
    env = tuple(
        (
            fields.text(e, "name", f"app.environment[{i}]"),
            fields.text(e, "value", f"app.environment[{i}]", default=""),
        )
        for i, e in enumerate(fields.objects(app, "environment", "app"))
    )
    ports = []
    for i, p in enumerate(fields.objects(app, "ports", "app")):
        where = f"app.ports[{i}]"
        protocol = fields.text(p, "protocol", where, default="tcp") or "tcp"
        name, number = fields.text(p, "name", where), fields.number(p, "port", where, high=65535)
        count = fields.number(p, "count", where, default=1, high=65535)
        if protocol in ("tcp", "udp"):
            ports.append(Port(name=name, port=number, protocol=Protocol(protocol), count=count))
    volumes = tuple(
        Volume(
            name=fields.text(m, "name", f"app.mountPoints[{i}]"),
            path=fields.text(m, "path", f"app.mountPoints[{i}]"),
            read_only=fields.flag(m, "readOnly", f"app.mountPoints[{i}]"),
        )
        for i, m in enumerate(fields.objects(app, "mountPoints", "app"))
    )
    labels = app.get("userLabels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise fields.wrong("app.userLabels", "an object of strings", labels)
    return ImageConfig(
        entrypoint=entrypoint,
        cmd=cmd,
        user=fields.text(app, "user", "app", default="") or None,
        group=fields.text(app, "group", "app", default="") or None,
        workdir=fields.text(app, "workingDirectory", "app", default="") or None,
        env=env,
        ports=tuple(ports),
        volumes=volumes,
        labels={str(k): str(v) for k, v in labels.items()},
    )


class _AciFields:
    """Typed reads of an ACI manifest's fields; a wrong one is a BuildError naming it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def wrong(self, where: str, expected: str, value: object) -> BuildError:
        shown = json.dumps(value)[:60] if value is not None else "missing"
        return BuildError(
            f"{self.source}: {where} must be {expected}, not {shown}",
            hint="the appc schema: https://github.com/appc/spec/blob/master/spec/aci.md#image-manifest-schema",
        )

    def objects(self, table: Mapping[str, object], key: str, where: str = "") -> list[dict[str, object]]:
        value = table.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.wrong(f"{where}.{key}" if where else key, "an array of objects", value)
        return value

    def strings(self, table: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.wrong(f"{where}.{key}", "an array of strings", value)
        return tuple(value)

    def text(self, table: Mapping[str, object], key: str, where: str, *, default: str | None = None) -> str:
        value = table.get(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or (default is None and not value):
            raise self.wrong(f"{where}.{key}", "a string", value)
        return value

    def number(
        self, table: Mapping[str, object], key: str, where: str, *, high: int, default: int | None = None
    ) -> int:
        value = table.get(key)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise self.wrong(f"{where}.{key}", f"an integer from 1 to {high}", value)
        return value

    def flag(self, table: Mapping[str, object], key: str, where: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise self.wrong(f"{where}.{key}", "true or false", value)
        return value


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


def lost_fields(config: ImageConfig, fmt: Format) -> list[str]:
    """What ``fmt`` cannot carry of ``config``: one warning each, naming the field and the format.

    The one source of these warnings: ``dualbuild plan`` shows them for the recipe's [app],
    the emitters for the image's whole config (a base's fields included).
    """
    noun = FORMAT_NOUNS[fmt]
    warnings = []
    if fmt is Format.ACI:
        warnings += [
            f"app.env: {name!r} is not a valid appc environment variable name; {noun} does not carry it"
            for name, _ in config.env
            if not ENV_NAME.fullmatch(name)
        ]
        warnings += [
            f"app.env: {name!r} is valid since appc 0.8.11 only; readers of an older spec "
            "(docker2aci's, rkt before 1.29) reject the whole ACI manifest"
            for name, _ in config.env
            if ENV_NAME.fullmatch(name) and not ENV_NAME_BEFORE_0_8_11.fullmatch(name)
        ]
    else:
        warnings += [
            f"app.volumes: volume {volume.name!r} ({volume.path}) is read-only, but an image config "
            f"cannot mark a volume read-only; {noun} declares it read-write"
            for volume in config.volumes
            if volume.read_only
        ]
    if config.healthcheck is not None and fmt is not Format.DOCKER:
        warnings.append(f"app.healthcheck: the {fmt} format has no healthcheck; {noun} does not carry it")
    if config.stop_signal and fmt is Format.ACI:
        what = config.stop_signal
        warnings.append(f"app.stop_signal: the {fmt} format has no stop signal; {noun} does not carry {what}")
    return warnings
