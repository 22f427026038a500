"""Helpers of the integration tests: buildah and skopeo against the test store, the CLI as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dualbuild.builder.cache import cache_image
from dualbuild.builder.stages import BuildOptions, BuiltImage, build_session
from dualbuild.builder.storage import StorageOptions
from dualbuild.plan import BuildPlan, make_plan
from dualbuild.recipe import load_recipe
from dualbuild.settings import Overrides, resolve
from tests.support import require_tools


def buildah(storage: StorageOptions, *args: str) -> str:
    """Run buildah against the test store; return stdout."""
    return subprocess.run(
        ["buildah", *storage.argv(), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def push_to_registry(archive: Path, reference: str) -> None:
    """Copy a docker-archive into the test registry with skopeo."""
    require_tools("skopeo")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"docker-archive:{archive}",
            f"docker://{reference}",
        ],
        check=True,
    )


def inspect_json(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


# --- the dualbuild command line, as users run it ------------------------------------------------

DUALBUILD = str(Path(sys.executable).parent / "dualbuild")


def dualbuild(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DUALBUILD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


Docker = Callable[..., subprocess.CompletedProcess[str]]


def write_recipe(directory: Path, body: str, name: str = "example.com/test") -> Path:
    path = directory / "recipe.toml"
    path.write_text(f'[image]\nname = "{name}"\nversion = "1.0"\n\n{body}')
    return path


class Builder:
    def __init__(self, storage: StorageOptions, cache_dir: Path) -> None:
        self.storage = storage
        self.cache_dir = cache_dir
        self.output: list[str] = []

    def plan(
        self, recipe: Path, isolation: str | None = None, build_args: dict[str, str] | None = None
    ) -> BuildPlan:
        loaded = load_recipe(recipe, build_args)
        environ = {"XDG_CACHE_HOME": str(self.cache_dir.parent)}
        return make_plan(loaded, resolve(loaded, Overrides(isolation=isolation), environ))

    @contextmanager
    def build(
        self, recipe: Path, isolation: str | None = None, build_args: dict[str, str] | None = None
    ) -> Iterator[BuiltImage]:
        options = BuildOptions(storage=self.storage, on_output=self.output.append)
        with build_session(self.plan(recipe, isolation, build_args), options) as session:
            yield session.build()

    def final_key(self, recipe: Path) -> str:
        with build_session(self.plan(recipe), BuildOptions(storage=self.storage)) as session:
            return session.keyed.final_key

    def containers(self) -> list[str]:
        return buildah(self.storage, "containers", "-q").split()

    def cached(self, key: str) -> bool:
        argv = ["buildah", *self.storage.argv(), "inspect", "--type", "image", cache_image(key)]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
