"""Property tests: whatever the input, the loader returns a Recipe or raises RecipeError."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualbuild.errors import RecipeError
from dualbuild.plan import make_plan
from dualbuild.recipe.app import APP_KEYS
from dualbuild.recipe.load import (
    IMAGE_KEYS,
    OUTPUT_KEYS,
    PUBLISH_KEYS,
    STAGE_KEYS,
    parse_recipe_bytes,
    parse_recipe_document,
)
from dualbuild.recipe.steps import ACTION_KEYS, ACTIONS

EXAMPLES = int(os.environ.get("DUALBUILD_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
PATH = Path("fuzz/recipe.toml")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        ["scratch", "stage:a", "stage:b", "docker-archive:x.tar", "rootfs:r.tar.gz", "aci:a.aci",
         "/abs", "rel/path", "../up", "${A}", "$${A}", "${", "0644", "1000:1000", "tcp", "udp",
         "SIGTERM", "30s", "docker", "aci", "oci", "amd64", "arm/v7", "example.com/x", "1.0"]
    ),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _table(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=len(keys))


step_keys = tuple(ACTIONS) + tuple({k for keys in ACTION_KEYS.values() for k in keys})
steps = st.lists(_table(step_keys), max_size=4)
stages = st.lists(
    st.builds(lambda table, s: {**table, "steps": s}, _table(STAGE_KEYS), steps) | values, max_size=3
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "image": _table(IMAGE_KEYS) | values,
        "args": st.dictionaries(st.sampled_from(["A", "B", "1x"]), values, max_size=3) | values,
        "stages": stages | values,
        "app": _table(APP_KEYS) | values,
        "output": _table(OUTPUT_KEYS) | values,
        "publish": _table(PUBLISH_KEYS) | values,
        "sign": _table(("key",)) | values,
    },
)


def _accept_or_recipe_error(load: object) -> None:
    assert callable(load)
    try:
        recipe = load()
    except RecipeError as error:
        problems = error.problems
    else:
        make_plan(recipe, environ={})
        return
    assert problems
    assert all(p.file for p in problems)


@FUZZ
@given(documents)
def test_recipe_shaped_documents(document: dict[str, object]) -> None:
    _accept_or_recipe_error(lambda: parse_recipe_document(document, PATH))


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_toml_text(text: str) -> None:
    _accept_or_recipe_error(lambda: parse_recipe_bytes(text.encode("utf-8", "surrogatepass"), PATH))


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    _accept_or_recipe_error(lambda: parse_recipe_bytes(data, PATH))


@settings(max_examples=EXAMPLES // 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(
    ["[image]", '[[stages]]', "[[stages.steps]]", "[app]", '[output]', 'name = "example.com/a"',
     'version = "1"', 'from = "scratch"', 'run = "true"', 'copy = "a"', 'to = "/b"', 'x = [',
     '"a",', "]", 'content = """', '"""', "ports = [{ name = \"h\", port = 1 }]", "# c", ""]
), max_size=25))  # fmt: skip
def test_recipe_like_lines(lines: list[str]) -> None:
    _accept_or_recipe_error(lambda: parse_recipe_bytes("\n".join(lines).encode(), PATH))
