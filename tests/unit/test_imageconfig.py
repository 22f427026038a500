"""The runtime config: read from what a base brings, overridden by [app], and what each format loses."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from dualbuild.errors import BuildError
from dualbuild.imageconfig import ImageConfig, apply_app, from_aci_manifest, from_docker_config, lost_fields
from dualbuild.recipe.model import App, Format, Healthcheck, Port, Protocol, Volume

ACI_MANIFEST = {
    "acKind": "ImageManifest",
    "app": {
        "exec": ["/usr/sbin/nginx", "-g", "daemon off;"],
        "user": "101",
        "group": "101",
        "workingDirectory": "/srv",
        "environment": [{"name": "PATH", "value": "/usr/bin"}, {"name": "EMPTY"}],
        "ports": [
            {"name": "http", "port": 80, "protocol": "tcp"},
            {"name": "x", "port": 9, "protocol": "sctp"},
        ],
        "mountPoints": [{"name": "data", "path": "/data", "readOnly": True}],
        "userLabels": {"a": "b"},
    },
    "annotations": [
        {"name": "appc.io/docker/entrypoint", "value": json.dumps(["/usr/sbin/nginx"])},
        {"name": "appc.io/docker/cmd", "value": json.dumps(["-g", "daemon off;"])},
    ],
}


def test_an_aci_app_comes_back_with_dockers_entrypoint_and_cmd_split() -> None:
    config = from_aci_manifest(ACI_MANIFEST)
    assert (config.entrypoint, config.cmd) == (("/usr/sbin/nginx",), ("-g", "daemon off;"))
    assert (config.user, config.group, config.workdir) == ("101", "101", "/srv")
    assert config.env == (("PATH", "/usr/bin"), ("EMPTY", ""))
    assert config.ports == (Port(name="http", port=80, protocol=Protocol.TCP),)  # sctp: no Docker form
    assert config.volumes == (Volume(name="data", path="/data", read_only=True),)
    assert config.labels == {"a": "b"}


def test_an_aci_without_docker_annotations_runs_its_exec_as_the_entrypoint() -> None:
    manifest = {**ACI_MANIFEST, "annotations": []}
    config = from_aci_manifest(manifest)
    assert (config.entrypoint, config.cmd) == (("/usr/sbin/nginx", "-g", "daemon off;"), None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # A string exec was one argument per character.
        (lambda app: app.update(exec="/bin/sh -c serve"), "app.exec must be an array of strings"),
        (
            lambda app: app["ports"][0].update(port="notint"),
            'app.ports[0].port must be an integer from 1 to 65535, not "notint"',
        ),
        (lambda app: app["ports"][0].update(count="many"), "app.ports[0].count must be an integer"),
        (lambda app: app["ports"][0].pop("name"), "app.ports[0].name must be a string, not missing"),
        (lambda app: app["environment"][0].pop("name"), "app.environment[0].name must be a string"),
        (lambda app: app["mountPoints"][0].pop("name"), "app.mountPoints[0].name must be a string"),
        (
            lambda app: app["mountPoints"][0].update(readOnly="yes"),
            "app.mountPoints[0].readOnly must be true or false",
        ),
        (lambda app: app.update(environment={"A": "1"}), "app.environment must be an array of objects"),
        (lambda app: app.update(userLabels=[]), "app.userLabels must be an object of strings"),
        (lambda app: app.update(user=0), "app.user must be a string"),
    ],
)
def test_an_aci_base_whose_app_breaks_the_schema_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    manifest = json.loads(json.dumps(ACI_MANIFEST))
    change(manifest["app"])
    with pytest.raises(BuildError) as caught:
        from_aci_manifest(manifest, "ACI base.aci")
    assert caught.value.exit_code == 1
    assert str(caught.value).startswith(f"ACI base.aci: {message}")


def test_app_overrides_the_base_as_a_dockerfile_would() -> None:
    base = from_docker_config(
        {
            "Entrypoint": ["/init"],
            "Cmd": ["serve"],
            "User": "app:staff",
            "Env": ["A=1", "B=2"],
            "Labels": {"x": "1"},
        }
    )
    assert (base.user, base.group) == ("app", "staff")
    config = apply_app(base, App(entrypoint=("/bin/new",), env={"B": "3"}), {"y": "2"})
    assert (config.entrypoint, config.cmd) == (("/bin/new",), None)  # a new entrypoint resets cmd
    assert config.env == (("A", "1"), ("B", "3"))
    assert config.labels == {"x": "1", "y": "2"}
    assert (config.user, config.group) == ("app", "staff")
    assert apply_app(base, App(user="root"), {}).group is None  # a new user drops the old group


def test_each_format_says_what_it_cannot_carry_in_the_same_words_everywhere() -> None:
    config = ImageConfig(
        env=(("dotted.ok", "1"), ("1BAD", "2")),
        volumes=(Volume(name="conf", path="/etc/conf", read_only=True),),
        healthcheck=Healthcheck(cmd=("true",)),
        stop_signal="SIGQUIT",
    )
    assert lost_fields(config, Format.ACI) == [
        "app.env: '1BAD' is not a valid appc environment variable name; the ACI does not carry it",
        "app.env: 'dotted.ok' is valid since appc 0.8.11 only; readers of an older spec "
        "(docker2aci's, rkt before 1.29) reject the whole ACI manifest",
        "app.healthcheck: the aci format has no healthcheck; the ACI does not carry it",
        "app.stop_signal: the aci format has no stop signal; the ACI does not carry SIGQUIT",
    ]
    read_only = "cannot mark a volume read-only; the {} declares it read-write"
    docker = lost_fields(config, Format.DOCKER)
    assert len(docker) == 1
    assert read_only.format("Docker archive") in docker[0]
    oci = lost_fields(config, Format.OCI)
    assert read_only.format("OCI archive") in oci[0]
    assert oci[1] == "app.healthcheck: the oci format has no healthcheck; the OCI archive does not carry it"
    assert lost_fields(ImageConfig(), Format.ACI) == []


@pytest.mark.parametrize(
    ("name", "warned"),
    [("dotted.name", True), ("A-B", True), ("_x.y-z", True), ("PLAIN_NAME_2", False), ("_", False)],
)
def test_env_names_that_appc_readers_before_0_8_11_reject_are_warned_about(name: str, warned: bool) -> None:
    # appc/spec v0.8.10 schema/types/environment.go: ^[A-Za-z_][A-Za-z_0-9]*$ (v0.8.11 adds . and -).
    warnings = lost_fields(ImageConfig(env=((name, "1"),)), Format.ACI)
    older = [w for w in warnings if "appc 0.8.11" in w]
    assert older == (
        [
            f"app.env: {name!r} is valid since appc 0.8.11 only; readers of an older spec "
            "(docker2aci's, rkt before 1.29) reject the whole ACI manifest"
        ]
        if warned
        else []
    )
    assert len(warnings) == len(older)  # the ACI carries it: no "does not carry" warning
    # Docker and OCI take any name: nothing to say there.
    assert lost_fields(ImageConfig(env=((name, "1"),)), Format.DOCKER) == []
