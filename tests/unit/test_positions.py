from __future__ import annotations

from dualbuild.recipe.positions import key_lines, line_of

DOC = '''[image]
name = "x"
labels = { "a.b" = "c" }

[[stages]]
name = "one"
  [[stages.steps]]
  run = """
[[stages]]
not = "a header"
"""
  [[stages.steps]]
  copy = [
    "a",
    "b",
  ]
  to = "/x"

[[stages]]
name = "two"
"quoted.key" = 1
dotted.key = 2

[app]
ports = [{ name = "http", port = 80 }]
'''


def test_tables_keys_and_arrays_of_tables_get_their_lines() -> None:
    lines = key_lines(DOC)
    assert lines[("image",)] == 1
    assert lines[("image", "name")] == 2
    assert lines[("stages", 0)] == 5
    assert lines[("stages", 0, "steps", 0, "run")] == 8
    assert lines[("stages", 0, "steps", 1)] == 12
    assert lines[("stages", 0, "steps", 1, "to")] == 17
    assert lines[("stages", 1, "name")] == 20
    assert lines[("stages", 1, "quoted.key")] == 21
    assert lines[("stages", 1, "dotted", "key")] == 22
    assert ("stages", 2) not in lines  # the header inside the multi-line string is not one


def test_nested_values_fall_back_to_the_enclosing_key() -> None:
    lines = key_lines(DOC)
    assert line_of(lines, ("image", "labels", "a.b")) == 3
    assert line_of(lines, ("app", "ports", 0, "port")) == 25
    assert line_of(lines, ("stages", 0, "steps", 1, "copy", 1)) == 13
    assert line_of(lines, ("nowhere",)) is None
