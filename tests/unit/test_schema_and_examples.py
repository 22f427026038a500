"""Every example recipe validates, in the loader and against the published JSON Schema."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from dualbuild.cli.main import cli
from dualbuild.recipe import app as recipe_app
from dualbuild.recipe import load as recipe_module
from dualbuild.recipe import steps as steps_module
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.schema import RECIPE_SCHEMA
from tests.support import ROOT

EXAMPLES = sorted((ROOT / "recipes").glob("*/recipe.toml"))
BAD = sorted((ROOT / "tests" / "unit" / "data" / "bad").glob("*.toml"))


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_validates_in_loader_and_schema(path: Path) -> None:
    load_recipe(path)
    jsonschema.validate(tomllib.loads(path.read_text()), RECIPE_SCHEMA)


def test_schema_command_prints_a_valid_schema() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json.loads(json.dumps(RECIPE_SCHEMA))


def _properties(schema: dict[str, object]) -> dict[str, dict[str, object]]:
    properties = schema["properties"]
    assert isinstance(properties, dict)
    return properties


def test_schema_knows_exactly_the_loaders_keys() -> None:
    top = _properties(RECIPE_SCHEMA)
    assert set(top) == set(recipe_module.TOP_KEYS)
    assert set(_properties(top["image"])) == set(recipe_module.IMAGE_KEYS)
    assert set(_properties(top["app"])) == set(recipe_app.APP_KEYS)
    assert set(_properties(top["output"])) == set(recipe_module.OUTPUT_KEYS)
    assert set(_properties(top["publish"])) == set(recipe_module.PUBLISH_KEYS)
    assert set(_properties(top["sign"])) == set(recipe_module.SIGN_KEYS)
    stage = top["stages"]["items"]
    assert isinstance(stage, dict)
    assert set(_properties(stage)) == set(recipe_module.STAGE_KEYS)
    variants = _properties(stage)["steps"]["items"]["oneOf"]  # type: ignore[index]
    schema_steps = {next(iter(v["required"])): set(v["properties"]) for v in variants}
    loader_steps = {a: {a, *keys} for a, keys in steps_module.ACTION_KEYS.items()}
    assert schema_steps == loader_steps


def _describes_every_key(schema: object, where: str) -> None:
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            assert "description" in sub, f"{where}.{name} has no description"
        for key, value in schema.items():
            _describes_every_key(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            _describes_every_key(item, f"{where}[{index}]")


def test_every_key_has_a_description() -> None:
    _describes_every_key(RECIPE_SCHEMA, "")


def test_schema_rejects_most_bad_fixtures_too() -> None:
    """The schema is a second opinion: it must not accept what the loader rejects for shape."""
    shape_errors = ["unknown-top-key", "typo-image-key", "step-typo-key", "bad-arch", "unknown-format"]
    for name in shape_errors:
        data = tomllib.loads((ROOT / "tests" / "unit" / "data" / "bad" / f"{name}.toml").read_text())
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, RECIPE_SCHEMA)
