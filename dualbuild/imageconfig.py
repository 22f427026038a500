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


def from_aci_manifest(manifest: Mapping[str, object]) -> ImageConfig:
    """Map an ACI manifest's app (and docker2aci's annotations) back to an ImageConfig."""
    app = manifest.get("app")
    app = app if isinstance(app, dict) else {}
    annotations = {str(a.get("name")): str(a.get("value")) for a in _dicts(manifest.get("annotations"))}
    exec_argv = tuple(str(x) for x in app.get("exec") or [])
    entrypoint, cmd = _docker_split(annotations, exec_argv)
    env = tuple((str(e["name"]), str(e.get("value", ""))) for e in _dicts(app.get("environment")))
    ports = tuple(
        Port(
            name=str(p["name"]),
            port=int(str(p["port"])),
            protocol=Protocol(str(p.get("protocol") or "tcp")),
            count=int(str(p.get("count") or 1)),
        )
        for p in _dicts(app.get("ports"))
        if p.get("protocol", "tcp") in ("tcp", "udp", "")
    )
    volumes = tuple(
        Volume(name=str(m["name"]), path=str(m["path"]), read_only=bool(m.get("readOnly", False)))
        for m in _dicts(app.get("mountPoints"))
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


def _dicts(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


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
