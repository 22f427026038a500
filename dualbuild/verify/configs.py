"""The Docker config says what the signed ACI's manifest says, field by field.

The mapping is DESIGN.md's "One config, three formats", as the emitters write it: exec is
Entrypoint + Cmd (the split kept in docker2aci's annotations), the ACI's numeric user and group
are the Docker ``User`` resolved through the image's own /etc/passwd and /etc/group, a port range
is one ``ExposedPorts`` key per port, a mount point is a ``Volumes`` path. What one format cannot
carry is not a difference (imageconfig.lost_fields): a stop signal, a healthcheck, a volume's
read-only flag, env names appc rejects, port and volume names.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping

from dualbuild.errors import BuildError
from dualbuild.imageconfig import ImageConfig, from_aci_manifest, from_docker_config
from dualbuild.layer.tree import id_records
from dualbuild.recipe.model import Arch
from dualbuild.recipe.rules import ENV_NAME

# docker2aci's annotations of Docker's split of exec (emit/aci.py writes them).
DOCKER_SPLIT = {"entrypoint": "appc.io/docker/entrypoint", "cmd": "appc.io/docker/cmd"}
_ID_FILES = ("passwd", "group")
# As layer/tree.py reads them: symlinks followed at most this often, files this large at most.
_MAX_SYMLINKS = 40
_MAX_ID_FILE = 16 << 20


class IdFiles:
    """The tree's /etc/passwd and /etc/group, kept while its entries stream by.

    Every small regular file named ``passwd`` or ``group`` is kept, and the symlinks on the way
    to one (``etc`` itself, or the files), because the link may come before its target.
    """

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._links: dict[str, str] = {}

    def wants(self, path: str, size: int) -> bool:
        """Whether the content of the regular file ``path`` is to be kept."""
        return posixpath.basename(path) in _ID_FILES and size <= _MAX_ID_FILE

    def add_file(self, path: str, data: bytes) -> None:
        """Keep a file's content (``path`` relative to the root)."""
        self._files[path] = data

    def take(self, other: IdFiles, paths: Iterable[str]) -> None:
        """Keep what ``other`` kept of these paths (the ones a rendered tree took from it)."""
        for path in paths:
            if path in other._files:
                self._files[path] = other._files[path]
            if path in other._links:
                self._links[path] = other._links[path]

    def add_link(self, path: str, target: str) -> None:
        """Note a symlink, if it can lead to /etc/passwd or /etc/group."""
        if posixpath.basename(path) in (*_ID_FILES, "etc"):
            self._links[path] = target

    def records(self, name: str) -> list[list[str]]:
        """The records of /etc/``name``, first match first (as layer/tree.py reads them)."""
        path = self._resolved(f"etc/{name}")
        text = self._files.get(path, b"").decode("utf-8", "surrogateescape") if path else ""
        return id_records(text)

    def _resolved(self, path: str) -> str | None:
        """``path`` with the kept symlinks followed inside the root, as ``resolve_in_root`` does."""
        for _ in range(_MAX_SYMLINKS):
            parts = path.split("/")
            for end in range(1, len(parts) + 1):
                head = "/".join(parts[:end])
                if head in self._links:
                    target = self._links[head]
                    base = "/" if target.startswith("/") else "/" + posixpath.dirname(head)
                    path = posixpath.normpath(posixpath.join(base, target, *parts[end:])).lstrip("/")
                    break
            else:
                return path
        return None


def resolve_user(ids: IdFiles, user: str | None, group: str | None) -> tuple[str, str]:
    """The uid and gid the ACI must carry for Docker's ``User``, as the ACI emitter resolves them.

    The rules of layer/tree.py ``resolve_ids``: no user is 0:0, numbers are used as they are,
    a user without a group gets its primary group (0 for a number /etc/passwd lacks).

    Raises:
        BuildError: a name is not in the image's /etc/passwd or /etc/group.
    """
    uid, primary = "0", "0"
    if user:
        passwd = ids.records("passwd")
        if _numeric(user):
            uid = user
            by_uid = [fields for fields in passwd if fields[2] == user]
            primary = by_uid[0][3] if by_uid and _numeric(by_uid[0][3]) else "0"
        else:
            found = _named(passwd, user, "passwd")
            uid, primary = found[2], found[3] if _numeric(found[3]) else "0"
    if not group:
        return str(int(uid)), str(int(primary))
    gid = group if _numeric(group) else _named(ids.records("group"), group, "group")[2]
    return str(int(uid)), str(int(gid))


def _numeric(text: str) -> bool:
    # str.isdigit() takes "²" too, which int() refuses.
    return text.isascii() and text.isdigit()


def _named(records: list[list[str]], name: str, file: str) -> list[str]:
    for fields in records:
        if fields[0] == name and _numeric(fields[2]):
            return fields
    raise BuildError(f"{name!r} is not in the image's /etc/{file}")


def compare_with_aci(
    document: Mapping[str, object],
    annotations: Mapping[str, str],
    repo_tags: list[str],
    manifest: Mapping[str, object],
    ids: IdFiles,
) -> list[str]:
    """Where the Docker config (and the OCI manifest's annotations) and the ACI manifest differ.

    Args:
        document: The Docker image config (platform, ``created``, ``config``).
        annotations: The OCI manifest's annotations.
        repo_tags: manifest.json's RepoTags.
        manifest: The ACI's image manifest.
        ids: The tree's /etc/passwd and /etc/group.

    Returns:
        One line per differing field, naming it and both values.
    """
    runtime = document.get("config")
    docker = from_docker_config(runtime if isinstance(runtime, dict) else {})
    try:
        aci = from_aci_manifest(manifest)
    except BuildError as error:
        return [f"ACI manifest: {error.message}"]
    app = manifest.get("app")
    raw_app: Mapping[str, object] = app if isinstance(app, dict) else {}
    aci_annotations = _named_values(manifest, "annotations")
    found: list[str] = []

    def differ(field: str, docker_side: tuple[str, object], aci_side: tuple[str, object]) -> None:
        if docker_side[1] != aci_side[1]:
            found.append(
                f"config: {field} differs: Docker {docker_side[0]} {_shown(docker_side[1])}, "
                f"ACI {aci_side[0]} {_shown(aci_side[1])}"
            )

    docker_exec = [*(docker.entrypoint or ()), *(docker.cmd or ())]
    differ("exec", ("Entrypoint+Cmd", docker_exec), ("app.exec", _listed(raw_app.get("exec"))))
    for field, key in DOCKER_SPLIT.items():
        argv = docker.entrypoint if field == "entrypoint" else docker.cmd
        differ(
            field,
            (field.capitalize(), None if argv is None else list(argv)),
            (f"annotation {key}", _argv(aci_annotations.get(key))),
        )
    found += _user_differences(docker, raw_app, ids)
    differ("workdir", ("WorkingDir", docker.workdir or "/"), ("app.workingDirectory", aci.workdir or "/"))
    # The ACI carries the names appc allows only (lost_fields warns of the others).
    env = [f"{name}={value}" for name, value in docker.env if ENV_NAME.fullmatch(name)]
    differ("env", ("Env", env), ("app.environment", [f"{name}={value}" for name, value in aci.env]))
    differ("ports", ("ExposedPorts", _port_keys(docker)), ("app.ports", _port_keys(aci)))
    differ(
        "volumes",
        ("Volumes", sorted(volume.path for volume in docker.volumes)),
        ("app.mountPoints", sorted(volume.path for volume in aci.volumes)),
    )
    for key in sorted(set(docker.labels) | set(aci.labels)):
        differ(f"label {key!r}", ("Labels", docker.labels.get(key)), ("app.userLabels", aci.labels.get(key)))
    # The ACI adds created and the exec split to the image's annotations (emit/aci.py).
    added = set(DOCKER_SPLIT.values()) | ({"created"} - set(annotations))
    for key in sorted(set(annotations) | (set(aci_annotations) - added)):
        differ(
            f"annotation {key!r}",
            ("OCI manifest annotations", annotations.get(key)),
            ("annotations", aci_annotations.get(key)),
        )
    if "created" not in annotations:
        differ(
            "created",
            ("created", document.get("created")),
            ("annotation created", aci_annotations.get("created")),
        )
    found += _identity_differences(document, repo_tags, manifest)
    return found


def _user_differences(docker: ImageConfig, app: Mapping[str, object], ids: IdFiles) -> list[str]:
    user = docker.docker_user
    try:
        uid, gid = resolve_user(ids, docker.user, docker.group)
    except BuildError as error:
        return [
            f"config: user differs: Docker User {_shown(user)}: {error.message}; "
            f"ACI app.user {_shown(app.get('user'))}, app.group {_shown(app.get('group'))}"
        ]
    found = []
    for field, number in (("user", uid), ("group", gid)):
        if app.get(field) != number:
            found.append(
                f"config: {field} differs: Docker User {_shown(user)} ({field} id {number}), "
                f"ACI app.{field} {_shown(app.get(field))}"
            )
    return found


def _identity_differences(
    document: Mapping[str, object], repo_tags: list[str], manifest: Mapping[str, object]
) -> list[str]:
    """Name and version (RepoTags), os and arch (the platform) against the ACI's name and labels."""
    labels = _named_values(manifest, "labels")
    found = []
    name, version = manifest.get("name"), labels.get("version")
    if f"{name}:{version}" not in repo_tags or any(tag.rpartition(":")[0] != name for tag in repo_tags):
        found.append(
            f"config: name differs: Docker RepoTags {_shown(repo_tags)}, ACI name {_shown(name)} "
            f"version {_shown(version)}"
        )
    architecture, variant = document.get("architecture"), document.get("variant")
    spelled = f"{architecture}/{variant}" if variant else str(architecture)
    try:
        appc: str | None = Arch(spelled).appc
    except ValueError:
        appc = None
    if document.get("os") != labels.get("os") or appc != labels.get("arch"):
        found.append(
            f"config: platform differs: Docker os {_shown(document.get('os'))} "
            f"architecture {_shown(spelled)}, "
            f"ACI labels os {_shown(labels.get('os'))} arch {_shown(labels.get('arch'))}"
        )
    return found


def _port_keys(config: ImageConfig) -> list[str]:
    """``PORT/PROTOCOL`` for every port, a range (count > 1) one key per port, as Docker's config has them."""
    return sorted(
        {f"{port.port + offset}/{port.protocol}" for port in config.ports for offset in range(port.count)}
    )


def _named_values(manifest: Mapping[str, object], key: str) -> dict[str, str]:
    """An ACI manifest's ``labels`` or ``annotations``: a list of {name, value}, as a mapping."""
    listed = manifest.get(key)
    items = listed if isinstance(listed, list) else []
    return {str(a.get("name")): str(a.get("value", "")) for a in items if isinstance(a, dict)}


def _listed(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _argv(annotation: str | None) -> list[str] | None:
    if annotation is None:
        return None
    try:
        value = json.loads(annotation)
    except ValueError:
        return [annotation]
    return [str(item) for item in value] if isinstance(value, list) else [annotation]


def _shown(value: object) -> str:
    """A field's value as the message shows it ("none" when absent)."""
    return "none" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
