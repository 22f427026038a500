"""Settings come from the option, then the environment, then the recipe, resolved in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualbuild.errors import RecipeError
from dualbuild.recipe import load_recipe
from dualbuild.recipe.model import Recipe
from dualbuild.settings import Overrides, cache_dir, resolve

RECIPE = """
[image]
name = "example.com/app"
version = "1"

[[stages]]
from = "scratch"

[output]
dir = "out"

[sign]
key = "recipe-key"
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return load_recipe(path)


def test_the_option_wins_then_the_environment_then_the_recipe(recipe: Recipe, tmp_path: Path) -> None:
    env = {"DUALBUILD_SIGN_KEY": "env-key", "DUALBUILD_ISOLATION": "chroot"}
    given = Overrides(
        sign_key="cli-key", isolation="runc", out_dir=tmp_path / "elsewhere", context=tmp_path / "c"
    )
    settings = resolve(recipe, given, env)
    assert (settings.sign_key, settings.isolation) == ("cli-key", "runc")
    assert (settings.out_dir, settings.context) == (tmp_path / "elsewhere", tmp_path / "c")
    settings = resolve(recipe, Overrides(), env)
    assert (settings.sign_key, settings.isolation) == ("env-key", "chroot")
    settings = resolve(recipe, Overrides(), {})
    assert (settings.sign_key, settings.isolation) == ("recipe-key", None)
    assert settings.out_dir == tmp_path / "out"
    assert settings.context == tmp_path


def test_paths_are_absolute_whatever_was_given(
    recipe: Recipe, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = resolve(recipe, Overrides(out_dir=Path("rel"), context=Path(".")), {})
    assert settings.out_dir == tmp_path / "rel"
    assert settings.context.is_absolute()


def test_source_date_epoch_the_recipe_pins_wins_over_the_environment(recipe: Recipe, tmp_path: Path) -> None:
    assert resolve(recipe, Overrides(), {}).source_date_epoch == 0
    assert resolve(recipe, Overrides(), {"SOURCE_DATE_EPOCH": "1234"}).source_date_epoch == 1234
    for bad in ("yesterday", "²", "8589934592", "9" * 5000, "253402300800"):
        with pytest.raises(RecipeError, match="is not an integer from 0 to 8589934591"):
            resolve(recipe, Overrides(), {"SOURCE_DATE_EPOCH": bad})
    assert resolve(recipe, Overrides(), {"SOURCE_DATE_EPOCH": "8589934591"}).source_date_epoch == 8589934591
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(RECIPE.replace('dir = "out"', "source_date_epoch = 99"))
    assert resolve(load_recipe(pinned), Overrides(), {"SOURCE_DATE_EPOCH": "1234"}).source_date_epoch == 99


def test_keyring_passphrase_and_cache_come_from_the_environment(recipe: Recipe) -> None:
    env = {"GNUPGHOME": "/keys", "DUALBUILD_SIGN_PASSPHRASE": "s3cret", "XDG_CACHE_HOME": "/cache"}
    settings = resolve(recipe, Overrides(), env)
    assert (settings.gnupghome, settings.passphrase, settings.cache_dir) == (
        Path("/keys"),
        "s3cret",
        Path("/cache/dualbuild"),
    )
    assert "s3cret" not in repr(settings)
    assert cache_dir({}).name == "dualbuild"
