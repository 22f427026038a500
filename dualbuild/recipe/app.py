"""Reading ``[app]``: the runtime config, with the rules of appc (AC Names) and Docker."""

from __future__ import annotations

import json
import re
import signal

from dualbuild.recipe.model import App, Healthcheck, Port, Protocol, Volume
from dualbuild.recipe.positions import KeyPath
from dualbuild.recipe.reader import Reader, describe_value
from dualbuild.recipe.rules import AC_NAME, USER_NAME, parse_duration_ns
from dualbuild.recipe.steps import read_container_path, read_env

APP_KEYS = (
    "entrypoint", "cmd", "user", "group", "workdir", "env", "ports", "volumes", "stop_signal",
    "healthcheck",
)  # fmt: skip
PORT_KEYS = ("name", "port", "protocol", "count")
VOLUME_KEYS = ("name", "path", "read_only")
HEALTHCHECK_KEYS = ("cmd", "interval", "timeout", "start_period", "retries")


def read_app(reader: Reader, value: object) -> App | None:
    """Read ``[app]``; None (with problems recorded) when it is invalid."""
    path: KeyPath = ("app",)
    table = reader.table(value, path, APP_KEYS)
    if table is None:
        return None
    ok = len(reader.problems)
    entrypoint = cmd = None
    if "entrypoint" in table:
        entrypoint = _read_argv(reader, table["entrypoint"], (*path, "entrypoint"))
    if "cmd" in table:
        cmd = _read_argv(reader, table["cmd"], (*path, "cmd"))
    user = _read_user(reader, table.get("user"), (*path, "user"))
    group = _read_user(reader, table.get("group"), (*path, "group"))
    workdir = None
    if "workdir" in table:
        workdir = read_container_path(reader, table["workdir"], (*path, "workdir"))
    env = read_env(reader, table.get("env", {}), (*path, "env"))
    ports = _read_ports(reader, table.get("ports", []))
    volumes = _read_volumes(reader, table.get("volumes", []))
    stop_signal = None
    if "stop_signal" in table:
        stop_signal = _read_signal(reader, table["stop_signal"], (*path, "stop_signal"))
    healthcheck = None
    if "healthcheck" in table:
        healthcheck = _read_healthcheck(reader, table["healthcheck"])
    if len(reader.problems) > ok:
        return None
    return App(
        entrypoint=entrypoint, cmd=cmd, user=user, group=group, workdir=workdir, env=env or {},
        ports=ports or (), volumes=volumes or (), stop_signal=stop_signal, healthcheck=healthcheck,
    )  # fmt: skip


def _read_argv(reader: Reader, value: object, path: KeyPath) -> tuple[str, ...] | None:
    if isinstance(value, str):
        reader.error(
            path,
            "expected an array of strings, got a string",
            "write it as an argv list, e.g. "
            + (json.dumps([value]) if " " not in value else json.dumps(["/bin/sh", "-c", value])),
        )
        return None
    items = reader.string_list(value, path)
    return tuple(items) if items is not None else None


def _read_user(reader: Reader, value: object, path: KeyPath) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0 or value > 2**32 - 2:
            reader.error(path, f"{value} is not a valid numeric id")
            return None
        return str(value)
    return reader.string(
        value, path, pattern=USER_NAME, rule="a user or group name or number",
        hint="a name from the image's /etc/passwd or /etc/group, or a number",
    )  # fmt: skip


def _read_ports(reader: Reader, value: object) -> tuple[Port, ...] | None:
    path: KeyPath = ("app", "ports")
    if not isinstance(value, list):
        reader.error(path, f"expected an array of tables, got {describe_value(value)}")
        return None
    ports: list[Port] = []
    for index, item in enumerate(value):
        here = (*path, index)
        table = reader.table(item, here, PORT_KEYS, required=("name", "port"), what="port table")
        if table is None:
            continue
        name = _read_ac_name(reader, table.get("name"), (*here, "name")) if "name" in table else None
        number = (
            reader.integer(table["port"], (*here, "port"), low=1, high=65535) if "port" in table else None
        )
        protocol_text = reader.string(table.get("protocol", "tcp"), (*here, "protocol"))
        protocol = None
        if protocol_text is not None:
            try:
                protocol = Protocol(protocol_text)
            except ValueError:
                reader.error((*here, "protocol"), f"{protocol_text!r} is not a protocol", "use tcp or udp")
        count = reader.integer(table.get("count", 1), (*here, "count"), low=1)
        if number is not None and count is not None and number + count > 65536:
            reader.error((*here, "count"), f"ports {number}..{number + count - 1} go past 65535")
            count = None
        if name is None or number is None or protocol is None or count is None:
            continue
        if any(p.name == name for p in ports):
            reader.error((*here, "name"), f"port name {name!r} is used twice")
        elif any(p.port == number and p.protocol == protocol for p in ports):
            reader.error((*here, "port"), f"port {number}/{protocol} is listed twice")
        ports.append(Port(name=name, port=number, protocol=protocol, count=count))
    return tuple(ports)


def _read_volumes(reader: Reader, value: object) -> tuple[Volume, ...] | None:
    path: KeyPath = ("app", "volumes")
    if not isinstance(value, list):
        reader.error(path, f"expected an array of tables, got {describe_value(value)}")
        return None
    volumes: list[Volume] = []
    for index, item in enumerate(value):
        here = (*path, index)
        table = reader.table(item, here, VOLUME_KEYS, required=("name", "path"), what="volume table")
        if table is None:
            continue
        name = _read_ac_name(reader, table.get("name"), (*here, "name")) if "name" in table else None
        mount = None
        if "path" in table:
            mount = read_container_path(reader, table["path"], (*here, "path"))
        read_only = reader.boolean(table.get("read_only", False), (*here, "read_only"))
        if name is None or mount is None or read_only is None:
            continue
        if any(v.name == name for v in volumes):
            reader.error((*here, "name"), f"volume name {name!r} is used twice")
        elif any(v.path == mount for v in volumes):
            reader.error((*here, "path"), f"volume path {mount!r} is listed twice")
        volumes.append(Volume(name=name, path=mount, read_only=read_only))
    return tuple(volumes)


def _read_ac_name(reader: Reader, value: object, path: KeyPath) -> str | None:
    return reader.string(
        value, path, pattern=AC_NAME, rule="an AC Name",
        hint="lowercase letters and digits separated by single '-' (appc AC Name), e.g. \"http\"",
    )  # fmt: skip


def _read_signal(reader: Reader, value: object, path: KeyPath) -> str | None:
    text = reader.string(value, path, hint='e.g. stop_signal = "SIGTERM"')
    if text is None:
        return None
    known = {s.name for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_")}
    if (
        text in known
        or (text.isdigit() and 1 <= int(text) <= 64)
        or re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", text)
    ):
        return text
    close = f"SIG{text}" if f"SIG{text}" in known else None
    reader.error(
        path,
        f"{text!r} is not a signal",
        f"did you mean {close!r}?" if close else "e.g. SIGTERM, SIGQUIT, SIGINT",
    )
    return None


def _read_healthcheck(reader: Reader, value: object) -> Healthcheck | None:
    path: KeyPath = ("app", "healthcheck")
    table = reader.table(value, path, HEALTHCHECK_KEYS, required=("cmd",))
    if table is None:
        return None
    ok = len(reader.problems)
    shell = isinstance(table.get("cmd"), str)
    cmd = reader.string_list(table.get("cmd", []), (*path, "cmd"), allow_single=True, allow_empty=False)
    durations: dict[str, int | None] = {}
    for key in ("interval", "timeout", "start_period"):
        durations[key] = None
        if key in table:
            text = reader.string(table[key], (*path, key), hint='a duration like "30s", "1m30s" or "500ms"')
            if text is not None:
                durations[key] = parse_duration_ns(text)
                if durations[key] is None:
                    reader.error((*path, key), f"{text!r} is not a duration", 'e.g. "30s", "1m30s", "500ms"')
    retries = reader.integer(table["retries"], (*path, "retries"), low=0) if "retries" in table else None
    if len(reader.problems) > ok or cmd is None:
        return None
    return Healthcheck(
        cmd=tuple(cmd), shell=shell, interval_ns=durations["interval"],
        timeout_ns=durations["timeout"], start_period_ns=durations["start_period"], retries=retries,
    )  # fmt: skip
