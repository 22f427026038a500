"""The runtime config of the built image: inherited from the base, overridden by [app].

This is what the build hands to the emitters together with the tree; the emitters map it to a
Docker/OCI config and an ACI app (../shared/DESIGN.md, "One config, three formats").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dualbuild.recipe.model import App, Healthcheck, Port, Protocol, Volume


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
    ENTRYPOINT does) unless the recipe sets ``cmd`` too. Env and labels merge by name.
    """
    env = dict(base.env)
    env.update(app.env)
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
