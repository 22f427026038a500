"""One bad recipe per failure mode: exit 2, the key (and line) named, a hint, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dualbuild.cli.main import cli

BAD = sorted((Path(__file__).parent / "data" / "bad").glob("*.toml"))


def _expectations(path: Path) -> tuple[str, int | None, str | None]:
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    expect = lines[0].removeprefix("# expect: ")
    line_text = lines[1].removeprefix("# line: ")
    hint = lines[2].removeprefix("# hint: ") if lines[2].startswith("# hint: ") else None
    return expect, None if line_text == "none" else int(line_text), hint


def test_there_are_enough_failure_modes() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_recipe_is_refused_with_a_pointed_message(path: Path) -> None:
    expect, line, hint = _expectations(path)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error_lines = [text for text in result.stderr.splitlines() if text.startswith("error: ")]
    matching = [text for text in error_lines if expect in text]
    assert matching, f"no error says {expect!r}:\n{result.stderr}"
    location = f"{path}:{line}:" if line is not None else f"{path}:"
    assert matching[0].startswith(f"error: {location}"), matching[0]
    if hint is not None:
        assert f"hint: {hint}" in result.stderr or hint in result.stderr, result.stderr
    assert "ok:" not in result.stdout


def test_all_errors_of_a_file_are_reported(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[image]\nname = "Bad Name"\nversion = "1"\n\n[[stages]]\nfrom = "scratch"\n\n'
        '[app]\nworkdir = "rel"\n\n[output]\nformats = ["zip"]\n'
    )
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "image.name" in result.stderr
    assert "app.workdir" in result.stderr
    assert "output.formats[0]" in result.stderr
    assert "3 problems found" in result.stderr


def test_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "cannot read recipe" in result.stderr


def test_validate_reports_good_and_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[image]\nname = "example.com/a"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n')
    result = CliRunner().invoke(cli, ["validate", str(good), str(BAD[0])])
    assert result.exit_code == 2
    assert f"ok: {good}" in result.stdout


def test_names_with_newlines_and_bad_bytes_are_recipe_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[image]\nname = "example.com/a\\nb"\nversion = "1\\n"\n[[stages]]\nfrom = "scratch"\n')
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "image.name" in result.stderr
    assert "image.version" in result.stderr


def test_ten_thousand_steps_validate_and_plan(tmp_path: Path) -> None:
    steps = "".join(f'  [[stages.steps]]\n  write = "/f{i}"\n  content = "{i}"\n' for i in range(10_000))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'[image]\nname = "example.com/many"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n{steps}'
    )
    result = CliRunner().invoke(cli, ["plan", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    assert '"number": 10000' in result.stdout


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (
            '  [[stages.steps]]\n  run = "' + "x" * 131072 + '"\n',
            "stages[0].steps[0].run",
            "131072 bytes is too long",
        ),
        (
            '  [[stages.steps]]\n  run = ["sh", "' + "x" * 131072 + '"]\n',
            "stages[0].steps[0].run[1]",
            "too long",
        ),
        (
            '  [[stages.steps]]\n  run = "true"\n  env = { BIG = "' + "x" * 131068 + '" }\n',
            "stages[0].steps[0].env.BIG",
            "131072 bytes",
        ),
    ],
)
def test_what_exec_cannot_take_is_exit_2_not_an_e2big_at_build_time(
    tmp_path: Path, body: str, key: str, message: str
) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'[image]\nname = "example.com/t"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n{body}')
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    assert f"{key}: " in result.stderr
    assert message in result.stderr
    assert "hint: write a long script to a file" in result.stderr


def test_a_recipe_nested_too_deeply_is_exit_2(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[image]\nname = "example.com/t"\nversion = "1"\nlabels = ' + "[" * 600 + "]" * 600 + "\n"
    )
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "nests arrays or tables too deeply" in result.stderr
