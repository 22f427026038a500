"""Reading ``[[stages.steps]]``: one action per step, only the keys that action takes."""

from __future__ import annotations

from dualbuild.recipe.model import (
    CopyStep,
    MkdirStep,
    Network,
    RemoveStep,
    RunStep,
    Step,
    SymlinkStep,
    WriteStep,
)
from dualbuild.recipe.mounts import check_overlaps, read_cache, read_secrets
from dualbuild.recipe.positions import KeyPath
from dualbuild.recipe.reader import Reader, describe_value
from dualbuild.recipe.rules import ENV_NAME, MODE, OWNER, check_context_path

ACTIONS = ("run", "copy", "write", "mkdir", "symlink", "remove")
# Linux's limit on one argument or environment string (MAX_ARG_STRLEN, with its NUL): a run
# string, an argv item and NAME=VALUE are each one when the step runs.
MAX_ARGUMENT_BYTES = 128 * 1024 - 1
# The largest uid or gid: ids are 32 bits, and 2**32 - 1 stands for "no id" (chown's -1).
MAX_ID = 2**32 - 2
# Keys each action takes besides itself.
ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "run": ("user", "workdir", "env", "network", "secrets", "cache", "rebuild_on_secret_change"),
    "copy": ("to", "from", "owner", "mode", "workdir"),
    "write": ("content", "mode", "owner", "workdir"),
    "mkdir": ("parents", "owner", "mode", "workdir"),
    "symlink": ("target", "workdir"),
    "remove": ("workdir",),
}
_KEY_HINTS = {
    "user": 'user applies to run steps; for files use owner = "UID:GID"',
    "env": "env applies to run steps",
    "network": "network applies to run steps",
    "secrets": "secrets are mounted for run steps only",
    "cache": "cache directories are mounted for run steps only",
    "rebuild_on_secret_change": "rebuild_on_secret_change applies to run steps",
    "owner": "owner applies to copy, write and mkdir steps",
    "mode": "mode applies to copy, write and mkdir steps",
}


def read_steps(reader: Reader, value: object, path: KeyPath, earlier: list[str]) -> tuple[Step, ...] | None:
    """Read a stage's steps; ``earlier`` names the stages a copy may take files from."""
    if not isinstance(value, list):
        reader.error(path, f"expected an array of [[stages.steps]] tables, got {describe_value(value)}")
        return None
    steps: list[Step] = []
    for index, item in enumerate(value):
        step = _read_step(reader, item, (*path, index), earlier)
        if step is not None:
            steps.append(step)
    return tuple(steps) if len(steps) == len(value) else None


def _read_step(reader: Reader, value: object, path: KeyPath, earlier: list[str]) -> Step | None:
    if not isinstance(value, dict):
        reader.error(path, f"expected a step table, got {describe_value(value)}")
        return None
    actions = [key for key in ACTIONS if key in value]
    if not actions:
        reader.error(path, "the step has no action", f"add exactly one of: {', '.join(ACTIONS)}")
        for key in value:
            if key not in {k for keys in ACTION_KEYS.values() for k in keys}:
                reader.unknown_key(
                    path, key, ACTIONS + tuple(k for keys in ACTION_KEYS.values() for k in keys)
                )
        return None
    if len(actions) > 1:
        reader.error(
            (*path, actions[1]),
            f"the step has more than one action ({', '.join(actions)})",
            "one action per step: split it into several [[stages.steps]]",
        )
        return None
    action = actions[0]
    allowed = (action, *ACTION_KEYS[action])
    ok = len(reader.problems)
    for key in value:
        if key not in allowed:
            if key in _KEY_HINTS:
                reader.error((*path, key), f"{action} steps do not take {key!r}", _KEY_HINTS[key])
            else:
                reader.unknown_key(path, key, allowed)
    workdir = None
    if "workdir" in value:
        workdir = read_container_path(reader, value["workdir"], (*path, "workdir"))
    if action == "copy":
        step = _read_copy(reader, value, path, workdir, earlier)
    else:
        step = _ACTION_READERS[action](reader, value, path, workdir)
    return step if len(reader.problems) == ok else None


def _read_run(reader: Reader, value: dict[str, object], path: KeyPath, workdir: str | None) -> Step | None:
    raw = value["run"]
    command: str | tuple[str, ...] | None = None
    if isinstance(raw, str):
        command = reader.string(raw, (*path, "run"))
        if command is not None and not _fits_an_argument(reader, command, (*path, "run")):
            command = None
    else:
        items = reader.string_list(raw, (*path, "run"), allow_empty=False)
        if items is not None and all(
            _fits_an_argument(reader, item, (*path, "run", index)) for index, item in enumerate(items)
        ):
            command = tuple(items)
    user = None
    if "user" in value:
        user = reader.string(value["user"], (*path, "user"), hint='a name, "UID" or "UID:GID"')
    env = read_env(reader, value.get("env", {}), (*path, "env"))
    network = Network.PRIVATE
    if "network" in value:
        text = reader.string(value["network"], (*path, "network"))
        if text is not None and text not in Network.__members__.values():
            reader.error(
                (*path, "network"), f"{text!r} is not a network mode", 'use "private", "host" or "none"'
            )
        elif text is not None:
            network = Network(text)
    secrets = read_secrets(reader, value["secrets"], (*path, "secrets")) if "secrets" in value else ()
    cache = read_cache(reader, value["cache"], (*path, "cache")) if "cache" in value else ()
    rebuild = False
    if "rebuild_on_secret_change" in value:
        rebuild = bool(reader.boolean(value["rebuild_on_secret_change"], (*path, "rebuild_on_secret_change")))
    if command is None or secrets is None or cache is None:
        return None
    check_overlaps(reader, path, secrets, cache)
    return RunStep(
        command=command, user=user, workdir=workdir, env=env or {}, network=network, secrets=secrets,
        cache=cache, rebuild_on_secret_change=rebuild,
    )  # fmt: skip


def _read_copy(
    reader: Reader, value: dict[str, object], path: KeyPath, workdir: str | None, earlier: list[str]
) -> Step | None:
    sources = reader.string_list(value["copy"], (*path, "copy"), allow_single=True, allow_empty=False)
    from_stage = None
    if "from" in value:
        from_stage = reader.string(value["from"], (*path, "from"))
        if from_stage is not None and not check_stage_reference(
            reader, from_stage, (*path, "from"), None, earlier
        ):
            from_stage = None
    good = sources is not None and ("from" not in value or from_stage is not None)
    for index, source in enumerate(sources or []):
        here = (*path, "copy", index) if isinstance(value["copy"], list) else (*path, "copy")
        if from_stage is not None and not source.startswith("/"):
            reader.error(here, f"{source!r} is not absolute", f"paths in stage {from_stage!r} are absolute")
            good = False
        elif from_stage is None and "from" not in value:
            good = check_context_path(reader, source, here) and good
    if "to" not in value:
        reader.error((*path, "to"), "copy needs a destination", 'add to = "/path/in/image/"')
        return None
    to = reader.string(value["to"], (*path, "to"))
    owner = _read_owner(reader, value, path)
    mode = _read_mode(reader, value, path)
    if not good or sources is None or to is None:
        return None
    return CopyStep(
        sources=tuple(sources), to=to, from_stage=from_stage, owner=owner, mode=mode, workdir=workdir
    )


def _read_write(reader: Reader, value: dict[str, object], path: KeyPath, workdir: str | None) -> Step | None:
    target = read_container_path(reader, value["write"], (*path, "write"), relative_ok=True)
    if "content" not in value:
        reader.error((*path, "content"), "write needs content", 'add content = "..." (may be empty)')
        return None
    content = reader.string(value["content"], (*path, "content"), allow_empty=True)
    owner = _read_owner(reader, value, path)
    mode = _read_mode(reader, value, path)
    if target is None or content is None:
        return None
    return WriteStep(
        path=target, content=content, mode=0o644 if mode is None else mode, owner=owner,
        workdir=workdir,
    )  # fmt: skip


def _read_mkdir(reader: Reader, value: dict[str, object], path: KeyPath, workdir: str | None) -> Step | None:
    target = read_container_path(reader, value["mkdir"], (*path, "mkdir"), relative_ok=True)
    parents = reader.boolean(value.get("parents", True), (*path, "parents"))
    owner = _read_owner(reader, value, path)
    mode = _read_mode(reader, value, path)
    if target is None or parents is None:
        return None
    return MkdirStep(
        path=target, parents=parents, owner=owner, mode=0o755 if mode is None else mode,
        workdir=workdir,
    )  # fmt: skip


def _read_symlink(
    reader: Reader, value: dict[str, object], path: KeyPath, workdir: str | None
) -> Step | None:
    link = read_container_path(reader, value["symlink"], (*path, "symlink"), relative_ok=True)
    if "target" not in value:
        reader.error((*path, "target"), "symlink needs a target", 'add target = "/path/it/points/to"')
        return None
    target = reader.string(value["target"], (*path, "target"))
    if target is not None and "\0" in target:
        reader.error((*path, "target"), "the target holds a NUL character, which no file name can")
        return None
    if link is None or target is None:
        return None
    return SymlinkStep(path=link, target=target, workdir=workdir)


def _read_remove(reader: Reader, value: dict[str, object], path: KeyPath, workdir: str | None) -> Step | None:
    raw = value["remove"]
    items = reader.string_list(raw, (*path, "remove"), allow_single=True, allow_empty=False)
    if items is None:
        return None
    paths = []
    for index, item in enumerate(items):
        here = (*path, "remove", index) if isinstance(raw, list) else (*path, "remove")
        checked = read_container_path(reader, item, here, relative_ok=True)
        if checked is not None and checked.strip("/") in ("", "."):
            reader.error(here, "refusing to remove the root directory")
            checked = None
        paths.append(checked)
    if None in paths:
        return None
    return RemoveStep(paths=tuple(p for p in paths if p is not None), workdir=workdir)


_ACTION_READERS = {
    "run": _read_run,
    "write": _read_write,
    "mkdir": _read_mkdir,
    "symlink": _read_symlink,
    "remove": _read_remove,
}


def _read_owner(reader: Reader, value: dict[str, object], path: KeyPath) -> str | None:
    if "owner" not in value:
        return None
    owner = reader.string(
        value["owner"], (*path, "owner"), pattern=OWNER, rule='"UID:GID"',
        hint='numeric ids, e.g. owner = "1000:1000"',
    )  # fmt: skip
    if owner is not None and any(int(part) > MAX_ID for part in owner.split(":")):
        reader.error((*path, "owner"), f"{owner!r}: ids go up to {MAX_ID}", 'e.g. owner = "1000:1000"')
        return None
    return owner


def _read_mode(reader: Reader, value: dict[str, object], path: KeyPath) -> int | None:
    if "mode" not in value:
        return None
    raw = value["mode"]
    if isinstance(raw, int) and not isinstance(raw, bool):
        reader.error(
            (*path, "mode"), f"expected an octal string, got an integer ({raw})",
            f'write it in quotes: mode = "0{raw}"' if raw < 10000 else 'e.g. mode = "0644"',
        )  # fmt: skip
        return None
    text = reader.string(
        raw, (*path, "mode"), pattern=MODE, rule="an octal mode", hint='e.g. "0644" or "0755"'
    )
    return int(text, 8) if text is not None else None


def read_container_path(
    reader: Reader, value: object, path: KeyPath, *, relative_ok: bool = False
) -> str | None:
    """A path inside the image: absolute (or, with relative_ok, relative to the workdir)."""
    text = reader.string(value, path)
    if text is None:
        return None
    if "\0" in text or "\n" in text:
        reader.error(path, "the path holds a NUL or newline character")
        return None
    if not relative_ok and not text.startswith("/"):
        reader.error(path, f"{text!r} is not an absolute path", f"write it as {'/' + text!r}")
        return None
    return text


def read_env(reader: Reader, value: object, path: KeyPath) -> dict[str, str] | None:
    """An environment table: names as appc allows them, string values."""
    env = reader.string_table(
        value, path, key_pattern=ENV_NAME, key_rule="a valid environment variable name",
        key_hint="letters, digits, '_', '.' and '-', not starting with a digit",
    )  # fmt: skip
    if env is not None and not all(
        _fits_an_argument(reader, f"{name}={text}", (*path, name)) for name, text in env.items()
    ):
        return None
    return env


def _fits_an_argument(reader: Reader, text: str, path: KeyPath) -> bool:
    size = len(text.encode("utf-8", "surrogateescape"))
    if size <= MAX_ARGUMENT_BYTES:
        return True
    reader.error(
        path,
        f"{size} bytes is too long for one command-line argument (Linux takes {MAX_ARGUMENT_BYTES})",
        "write a long script to a file (a write or copy step) and run that file",
    )
    return False


def check_stage_reference(
    reader: Reader, name: str, path: KeyPath, current: str | None, earlier: list[str]
) -> bool:
    """A stage named by ``stage:NAME`` or copy ``from``: an earlier stage, never itself."""
    if name in earlier:
        return True
    if name == current:
        reader.error(path, f"stage {name!r} cannot start from itself")
    else:
        known = ", ".join(repr(s) for s in earlier) or "none"
        reader.error(
            path,
            f"{name!r} does not name an earlier stage",
            f"stages are built in order and may use only the ones before them (earlier: {known})",
        )
    return False
