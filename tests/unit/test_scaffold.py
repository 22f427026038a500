"""`dualbuild new`: templates, variables, prompts, the refusals, and the example recipes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import jsonschema
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from dualbuild.cli import new as cli_new
from dualbuild.cli.main import cli
from dualbuild.cli.new import new_command
from dualbuild.errors import DualbuildError, RecipeError, UsageError
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.model import CopyStep
from dualbuild.recipe.schema import RECIPE_SCHEMA
from dualbuild.scaffold import render as scaffold
from dualbuild.scaffold.render import NewRequest, new_recipe, toml_value
from tests.support import ROOT

SHIPPED = ("busybox-tools", "convert", "debian-service", "go-app", "python-app", "scratch-static")

# The values each example in recipes/<template>/ was rendered with. Re-render one with
#   dualbuild new TEMPLATE recipes/TEMPLATE --force --set KEY=VALUE ...
EXAMPLES: dict[str, list[str]] = {
    "scratch-static": ["name=example.com/hello-static", "version=1.0.0", "port=0"],
    "go-app": ["name=example.com/hello-go", "version=1.0.0"],
    "python-app": ["name=example.com/hello-py", "version=1.0.0"],
    "debian-service": [
        "name=example.com/hello-service",
        "version=1.0.0",
        "packages=ca-certificates,python3",
        "user=hello",
    ],
    "busybox-tools": ["name=example.com/toolbox", "version=1.0.0", "scripts=wait-for"],
    "convert": ["name=example.com/nginx", "version=1.27", "sign_key=releases@example.com"],
}

# Values unlike the defaults, taking the templates' other branches.
SETS: dict[str, list[str]] = {
    "scratch-static": ["name=registry.example.com/team/srv", "binary=srv.bin", "arch=arm64", "port=0"],
    "go-app": ["name=example.com/api", "go=1.23.2", "package=./cmd/api", "binary=api-server", "port=0"],
    "python-app": ["name=example.com/web-app", "python=3.13", "module=web.main", "port=0", "uid=2000"],
    "debian-service": [
        "name=example.com/db",
        "suite=trixie",
        "packages=",
        "program=dbd",
        "user=_db",
        "uid=500",
        "port=0",
        "data_dir=/srv/db",
        "health_path=",
    ],
    "busybox-tools": ["base=rootfs:busybox-rootfs.tar", "scripts=bin/a, bin/b", "user=ops", "uid=4242"],
    "convert": [
        "source=docker-archive:image.tar",
        "tls_verify=false",
        'sign_key=Jo "Q" <jo@example.com>',
        "publish_docker=registry.example.com/mirror/nginx",
        "aci_site=https://example.com/aci",
    ],
}


def _dualbuild() -> click.Group:
    # The real group class, so that errors become messages and exit codes as in `dualbuild`.
    return type(cli)(name="dualbuild", commands=[new_command])


def run_new(*args: str, answers: str | None = None) -> Result:
    return CliRunner().invoke(_dualbuild(), ["new", *args], input=answers)


def _sets(values: list[str]) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def build_template(root: Path, name: str, tree: dict[str, str | bytes]) -> Path:
    """Write a template folder: `tree` maps relative paths to contents."""
    for relative, content in tree.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


MINIMAL_RECIPE = """[image]
name = {{ name | toml }}
version = {{ version | toml }}

[[stages]]
from = "scratch"
"""


@pytest.fixture
def no_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything prompts."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"prompted: {args}")

    monkeypatch.setattr(click, "prompt", refuse)
    monkeypatch.setattr(click, "confirm", refuse)


@pytest.fixture
def custom_templates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A templates folder the CLI reads instead of the shipped one."""
    root = tmp_path / "templates"
    root.mkdir()
    monkeypatch.setattr(scaffold, "templates_root", lambda: root)
    return root


@pytest.fixture
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- the shipped templates ---------------------------------------------------------------


def test_the_shipped_templates_are_found_and_described() -> None:
    templates = scaffold.list_templates()
    assert {t.name for t in templates} >= set(SHIPPED)
    for template in templates:
        assert template.description
        assert "\n" not in template.description
        assert [v.name for v in template.variables[:2]] == ["name", "version"]
        assert all(v.default is not None for v in template.variables), template.name


def test_list_prints_one_template_a_line() -> None:
    result = run_new("--list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(scaffold.list_templates())
    for line, template in zip(lines, scaffold.list_templates(), strict=True):
        name, description = line.split(maxsplit=1)
        assert (name, description) == (template.name, template.description)


def _check_rendered(path: Path) -> None:
    load_recipe(path)
    jsonschema.validate(tomllib.loads(path.read_text()), RECIPE_SCHEMA)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.usefixtures("no_prompts")
def test_template_renders_with_its_defaults(name: str, in_tmp: Path) -> None:
    result = run_new(name)
    assert result.exit_code == 0, result.output
    template = scaffold.load_template(name)
    default_name = template.variables[0].default
    assert isinstance(default_name, str)
    recipe = in_tmp / default_name.rsplit("/", 1)[-1] / "recipe.toml"
    assert f"created         {recipe.relative_to(in_tmp)}" in result.stdout
    _check_rendered(recipe)
    assert load_recipe(recipe).image.name == default_name


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.usefixtures("no_prompts")
def test_template_renders_with_set_values(name: str, in_tmp: Path) -> None:
    result = run_new(name, "out", *_sets(SETS[name]))
    assert result.exit_code == 0, result.output
    _check_rendered(in_tmp / "out" / "recipe.toml")


def test_set_values_take_the_other_branches(in_tmp: Path) -> None:
    for name in ("debian-service", "convert", "scratch-static", "busybox-tools"):
        assert run_new(name, name, *_sets(SETS[name])).exit_code == 0
    service = load_recipe(in_tmp / "debian-service" / "recipe.toml")
    assert service.app.ports == ()
    assert service.app.healthcheck is None
    base = service.stages[0].base
    assert getattr(base, "packages", None) == ("passwd",)  # no curl without a healthcheck
    converted = load_recipe(in_tmp / "convert" / "recipe.toml")
    assert converted.stages[0].tls_verify is False
    assert converted.sign.key == 'Jo "Q" <jo@example.com>'
    assert converted.publish.docker == "registry.example.com/mirror/nginx"
    assert converted.image.labels == {}  # no base.name label for an archive
    static = load_recipe(in_tmp / "scratch-static" / "recipe.toml")
    assert static.image.arch.value == "arm64"
    assert static.app.ports == ()
    tools = load_recipe(in_tmp / "busybox-tools" / "recipe.toml")
    copies = [s for s in tools.stages[0].steps if isinstance(s, CopyStep)]
    assert copies[0].sources == ("bin/a", "bin/b")


# --- the example recipes -------------------------------------------------------------------


def test_every_template_has_an_example() -> None:
    assert set(EXAMPLES) == set(SHIPPED)
    assert {p.parent.name for p in (ROOT / "recipes").glob("*/recipe.toml")} >= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_example_is_what_its_template_renders(name: str, tmp_path: Path) -> None:
    request = NewRequest(template=name, directory=tmp_path / name, assignments=tuple(EXAMPLES[name]))
    new_recipe(request)
    rendered = (tmp_path / name / "recipe.toml").read_text()
    assert rendered == (ROOT / "recipes" / name / "recipe.toml").read_text(), (
        f"recipes/{name}/recipe.toml differs from its template; re-render it (see EXAMPLES)"
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_example_holds_the_files_it_copies(name: str) -> None:
    folder = ROOT / "recipes" / name
    recipe = load_recipe(folder / "recipe.toml")
    for stage in recipe.stages:
        for step in stage.steps:
            if isinstance(step, CopyStep) and step.from_stage is None:
                for source in step.sources:
                    assert (folder / source).exists(), f"recipes/{name}/{source} is missing"


# --- prompts ---------------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_new, "stdin_is_interactive", lambda: True)


@pytest.mark.usefixtures("terminal")
def test_prompts_ask_for_what_set_did_not_give(in_tmp: Path) -> None:
    # name (first a bad one, then asked again), version, package, binary, port; not go
    answers = "Bad Name\nexample.com/prompted\n\n\n\n9090\n"
    result = run_new("go-app", "--set", "go=1.23", answers=answers)
    assert result.exit_code == 0, result.output
    assert "name: image name" in result.output
    assert "is not a valid image name" in result.output  # said, then asked again
    assert "go: " not in result.output  # given with --set: not asked
    assert "binary: name of the binary in the image (/usr/local/bin/BINARY) [prompted]: " in result.output
    recipe = load_recipe(in_tmp / "prompted" / "recipe.toml")
    assert recipe.image.name == "example.com/prompted"
    assert recipe.app.entrypoint == ("/usr/local/bin/prompted",)
    assert recipe.app.ports[0].port == 9090
    assert recipe.stages[0].base.reference == "docker.io/library/golang:1.23-bookworm"  # type: ignore[union-attr]


@pytest.mark.usefixtures("terminal")
def test_prompts_offer_choices_and_yes_no(in_tmp: Path) -> None:
    result = run_new("python-app", "--set", "name=example.com/py", answers="\n2.7\n3.13\n\n\n\n")
    assert result.exit_code == 0, result.output
    assert "(3.11, 3.12, 3.13)" in result.output
    assert "'2.7' is not one of: 3.11, 3.12, 3.13" in result.output
    assert "python:3.13-slim-bookworm" in (in_tmp / "py" / "recipe.toml").read_text()
    result = run_new("convert", "--set", "name=example.com/conv", answers="\n\nn\n\n\n\n")
    assert result.exit_code == 0, result.output
    assert "tls_verify: verify TLS when pulling from the registry [Y/n]: " in result.output
    assert load_recipe(in_tmp / "conv" / "recipe.toml").stages[0].tls_verify is False


def test_without_a_terminal_stdin_is_not_interactive() -> None:
    seen: list[bool] = []
    command = click.Command("probe", callback=lambda: seen.append(cli_new.stdin_is_interactive()))
    assert CliRunner().invoke(command, []).exit_code == 0
    assert seen == [False]


@pytest.mark.usefixtures("no_prompts")
def test_without_a_terminal_nothing_is_asked(in_tmp: Path) -> None:
    result = run_new("debian-service", "--set", "port=9000", answers="")
    assert result.exit_code == 0, result.output
    assert load_recipe(in_tmp / "hello-service" / "recipe.toml").app.ports[0].port == 9000


@pytest.mark.usefixtures("no_prompts", "in_tmp")
def test_without_a_terminal_a_value_without_default_must_be_set(custom_templates: Path) -> None:
    build_template(custom_templates, "needs", {
        "template.toml": 'description = "d"\n[variables.thing]\nhelp = "the thing"\n',
        "recipe.toml.jinja": "# {{ thing }}\n" + MINIMAL_RECIPE,
    })  # fmt: skip
    result = run_new("needs")
    assert result.exit_code == 2
    assert "needs a value for 'thing' (the thing)" in result.stderr
    assert "hint: pass --set thing=VALUE" in result.stderr
    assert run_new("needs", "--set", "thing=x").exit_code == 0


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("port", "--set 'port' is not KEY=VALUE"),
        ("=1", "is not KEY=VALUE"),
        ("prot=1", "has no variable 'prot'"),
        ("port=eighty", "port: 'eighty' is not an integer"),
        ("go=latest", "go: 'latest' does not match the pattern"),
        ("name=Example.com/X", "name: 'Example.com/X' is not a valid image name"),
        ("name=..", "is not a valid image name"),
        ("version=-1", "version: '-1' is not a valid Docker tag"),
        ("binary=a\nb", "holds a control character"),
        ("binary=\udcff", "holds a control character or is not valid UTF-8"),
    ],
)
def test_bad_set_is_refused(assignment: str, message: str, in_tmp: Path) -> None:
    result = run_new("go-app", "--set", assignment)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert _files_under(in_tmp) == []


def test_bool_and_choice_values_are_checked(in_tmp: Path) -> None:
    assert "is not true or false" in run_new("convert", "--set", "tls_verify=maybe").stderr
    assert "'3.14' is not one of" in run_new("python-app", "--set", "python=3.14").stderr
    assert "'Bad' does not match" in run_new("debian-service", "--set", "packages=ok,Bad").stderr
    assert _files_under(in_tmp) == []


def test_unknown_template_is_refused_with_a_suggestion() -> None:
    result = run_new("go-ap")
    assert result.exit_code == 2
    assert "there is no template 'go-ap'" in result.stderr
    assert "did you mean 'go-app'?" in result.stderr
    assert run_new().exit_code == 2


def test_an_invalid_rendered_recipe_is_refused_and_nothing_written(in_tmp: Path) -> None:
    result = run_new("go-app", "--set", "port=70000")
    assert result.exit_code == 2
    assert "hello-go/recipe.toml:" in result.stderr
    assert "app.ports[0].port: 70000 is out of range" in result.stderr
    assert "rendered from template 'go-app' is invalid, so nothing was written" in result.stderr
    assert _files_under(in_tmp) == []
    with pytest.raises(RecipeError):
        new_recipe(NewRequest(template="go-app", assignments=("port=70000",)))


# --- overwrite, outside DIR, pretend -----------------------------------------------------------


def test_existing_files_are_not_overwritten_without_force(in_tmp: Path) -> None:
    assert run_new("go-app", "app").exit_code == 0
    recipe = in_tmp / "app" / "recipe.toml"
    again = run_new("go-app", "app")
    assert again.exit_code == 0
    assert "unchanged       app/recipe.toml" in again.stdout
    recipe.write_text("# mine\n")
    refused = run_new("go-app", "app", "--set", "port=1")
    assert refused.exit_code == 2
    assert "refusing to overwrite app/recipe.toml" in refused.stderr
    assert "hint: pass --force" in refused.stderr
    assert recipe.read_text() == "# mine\n"
    recipe.chmod(0o600)
    forced = run_new("go-app", "app", "--force")
    assert forced.exit_code == 0
    assert "overwrote       app/recipe.toml" in forced.stdout
    assert recipe.read_text().startswith("# example.com/hello-go")
    assert recipe.stat().st_mode & 0o777 == 0o600  # an overwritten file keeps its mode
    assert _files_under(in_tmp) == ["app", "app/recipe.toml"]  # no temporary left behind


def test_a_folder_in_the_way_is_refused_even_with_force(in_tmp: Path) -> None:
    (in_tmp / "app" / "recipe.toml").mkdir(parents=True)
    result = run_new("go-app", "app", "--force")
    assert result.exit_code == 2
    assert "it is a folder" in result.stderr
    (in_tmp / "file").write_text("x")
    result = run_new("go-app", "file", "--force")
    assert result.exit_code == 2
    assert "refusing to write file/recipe.toml: file is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("file_name", "value"),
    [
        ("{{ target }}.jinja", "../x"),
        ("{{ target }}.jinja", "sub/../../x"),
        ("{{ target }}", "/tmp/dualbuild-scaffold-test-escape"),
        ("{{ '..' }}/{{ target }}", "x"),
        ("{{ target }}", "a\\..\\..\\x"),
    ],
)
def test_nothing_is_written_outside_dir(
    file_name: str, value: str, custom_templates: Path, in_tmp: Path, tmp_path: Path
) -> None:
    build_template(custom_templates, "escape", {
        "template.toml": 'description = "d"\n[variables.target]\ndefault = "t"\nhelp = "a file name"\n',
        "recipe.toml.jinja": MINIMAL_RECIPE,
        file_name: "escaped\n",
    })  # fmt: skip
    result = run_new("escape", "out", "--set", f"target={value}", "--force")
    assert result.exit_code == 2, result.output
    assert "it is not inside DIR" in result.stderr
    assert "escape/" in result.stderr  # names the template file
    assert _files_under(in_tmp) == []
    assert not Path("/tmp/dualbuild-scaffold-test-escape").exists()
    assert not (tmp_path / "x").exists()


def test_a_symbolic_link_out_of_dir_is_refused(custom_templates: Path, in_tmp: Path, tmp_path: Path) -> None:
    build_template(custom_templates, "linked", {
        "template.toml": 'description = "d"\n',
        "recipe.toml.jinja": MINIMAL_RECIPE,
        "etc/passwd": "oops\n",
    })  # fmt: skip
    outside = tmp_path / "outside"
    outside.mkdir()
    (in_tmp / "out").mkdir()
    (in_tmp / "out" / "etc").symlink_to(outside)
    result = run_new("linked", "out", "--force")
    assert result.exit_code == 2
    assert "leads outside out" in result.stderr
    assert list(outside.iterdir()) == []
    assert not (in_tmp / "out" / "recipe.toml").exists()


def test_pretend_shows_what_would_be_written_and_writes_nothing(in_tmp: Path) -> None:
    result = run_new("scratch-static", "--pretend", "--set", "binary=tool")
    assert result.exit_code == 0, result.output
    assert "would create    hello-static/recipe.toml" in result.stdout
    assert "--- hello-static/recipe.toml" in result.stdout
    assert 'copy = ["tool"]' in result.stdout
    assert _files_under(in_tmp) == []
    outcome = new_recipe(NewRequest(template="scratch-static", pretend=True))
    assert not outcome.written
    assert outcome.files[0].action is scaffold.Action.CREATE


def test_pretend_reports_the_same_refusals(in_tmp: Path) -> None:
    (in_tmp / "hello-static").mkdir()
    (in_tmp / "hello-static" / "recipe.toml").write_text("# mine\n")
    result = run_new("scratch-static", "--pretend")
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.stderr
    result = run_new("scratch-static", "--pretend", "--force")
    assert result.exit_code == 0
    assert "would overwrite" in result.stdout
    assert (in_tmp / "hello-static" / "recipe.toml").read_text() == "# mine\n"


# --- template files ---------------------------------------------------------------------------


def test_file_names_are_rendered_and_plain_files_copied_as_they_are(
    custom_templates: Path, tmp_path: Path
) -> None:
    blob = bytes(range(256))
    build_template(custom_templates, "files", {
        "template.toml": 'description = "d"\n[variables.docs]\ntype = "bool"\ndefault = false\nhelp = "d"\n',
        "recipe.toml.jinja": MINIMAL_RECIPE,
        "{{ name | basename }}.bin": blob,
        "{% if docs %}README.md{% endif %}.jinja": "# {{ name }}\n",
        "conf/{{ version }}.txt.jinja": "v={{ version }}",
    })  # fmt: skip
    out = tmp_path / "out"
    new_recipe(NewRequest(template="files", directory=out, assignments=("version=2.0",)))
    assert _files_under(out) == ["app.bin", "conf", "conf/2.0.txt", "recipe.toml"]
    assert (out / "app.bin").read_bytes() == blob
    assert (out / "conf" / "2.0.txt").read_text() == "v=2.0"  # no newline added: keep_trailing_newline
    new_recipe(NewRequest(template="files", directory=out, assignments=("version=2.0", "docs=yes")))
    assert (out / "README.md").read_text() == "# example.com/app\n"


@pytest.mark.parametrize(
    ("source", "where", "message"),
    [
        ("a = 1\nb = {{ nope }}\n", "broken/recipe.toml.jinja:2", "'nope' is undefined"),
        ("a = 1\n\n{% if %}\n", "broken/recipe.toml.jinja:3", "Expected an expression"),
        ("{{ none | toml }}\n", "broken/recipe.toml.jinja:1", "cannot write NoneType"),
        ("{% for x in 3 %}{% endfor %}\n", "broken/recipe.toml.jinja:1", "not iterable"),
    ],
)
def test_a_template_error_names_the_file_and_line(
    source: str, where: str, message: str, custom_templates: Path, in_tmp: Path
) -> None:
    build_template(
        custom_templates, "broken", {"template.toml": 'description = "d"\n', "recipe.toml.jinja": source}
    )
    result = run_new("broken")
    assert result.exit_code == 1, result.output
    assert f"error: template {where}: " in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert _files_under(in_tmp) == []


@pytest.mark.parametrize(
    ("template_toml", "message"),
    [
        ('description = "d"\nextra = 1\n', "unknown key 'extra'"),
        ("description = ''\n", "description: must be a one-line string"),
        ('description = "d\n', "broken/template.toml: "),
        ('description = "d"\nvariables = 3\n', "variables: must be a table"),
        ('description = "d"\n[variables.Bad]\nhelp = "h"\n', "variables.Bad: a table, named with lowercase"),
        ('description = "d"\n[variables.x]\nhelp = "h"\ntypo = 1\n', "variables.x.typo: unknown key"),
        ('description = "d"\n[variables.x]\nhelp = "h"\ntype = "float"\n', "'float' is not one of"),
        ('description = "d"\n[variables.x]\ndefault = "a"\n', "variables.x.help: every variable needs"),
        (
            'description = "d"\n[variables.x]\nhelp = "h"\ntype = "int"\ndefault = "1"\n',
            "'1' is not of type int",
        ),
        ('description = "d"\n[variables.x]\nhelp = "h"\npattern = "("\n', "x.pattern: must be a regular"),
        ('description = "d"\n[variables.x]\nhelp = "h"\ntype = "bool"\nchoices = [true]\n', "x.choices"),
        ('description = "d"\n[variables.x]\nhelp = "h"\nchoices = ["a"]\ndefault = "b"\n', "not one of its"),
        (
            'description = "d"\n[variables.x]\nhelp = "h"\ndefault = "{{ y }}"\n',
            "x.default: 'y' is undefined",
        ),
        ('description = "d"\n[variables.version]\nhelp = "h"\ntype = "int"\n', "version is always a str"),
    ],
)
def test_a_broken_template_toml_is_named(template_toml: str, message: str, custom_templates: Path) -> None:
    build_template(
        custom_templates, "broken", {"template.toml": template_toml, "recipe.toml.jinja": MINIMAL_RECIPE}
    )
    with pytest.raises(DualbuildError, match=r"broken/template\.toml") as caught:
        new_recipe(NewRequest(template="broken", pretend=True))
    assert message in str(caught.value)
    assert not isinstance(caught.value, UsageError | RecipeError)


def test_a_template_must_render_a_recipe(custom_templates: Path) -> None:
    build_template(custom_templates, "empty", {"template.toml": 'description = "d"\n', "notes.txt": "x"})
    with pytest.raises(DualbuildError, match=r"renders no recipe\.toml"):
        new_recipe(NewRequest(template="empty", pretend=True))


@given(st.text())
def test_toml_filter_writes_any_string_as_toml(text: str) -> None:
    assert tomllib.loads(f"value = {toml_value(text)}\n")["value"] == text


def test_toml_filter_writes_numbers_booleans_and_lists() -> None:
    values = [7, True, ["a", 'b"c'], ("x",)]
    written = "\n".join(f"v{index} = {toml_value(value)}" for index, value in enumerate(values))
    assert tomllib.loads(written) == {"v0": 7, "v1": True, "v2": ["a", 'b"c'], "v3": ["x"]}
