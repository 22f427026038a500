"""Secrets and cache folders of run steps: read from the recipe and --secret, checked, keyed, bound."""

from __future__ import annotations

import fcntl
import os
import re
import threading
from pathlib import Path

import pytest

from dualbuild.builder import cachemounts
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.cache import definition
from dualbuild.builder.context import load_filter, select
from dualbuild.builder.runstep import remove_mount_stubs
from dualbuild.builder.runtime import Bind
from dualbuild.builder.secrets import check_secrets, read_secret, secret_digest, secret_ids
from dualbuild.cli.options import parse_secrets
from dualbuild.errors import BuildError, RecipeError, UsageError
from dualbuild.plan import make_plan
from dualbuild.recipe.load import load_recipe
from dualbuild.recipe.model import CacheMount, CacheSharing, Network, RunStep, SecretMount
from dualbuild.settings import Overrides, SecretSource, resolve
from tests.unit.conftest import FakeRun

RECIPE = """
[image]
name = "example.com/s"
version = "1"

[[stages]]
from = "scratch"
  [[stages.steps]]
  run = "make"
  secrets = [{ id = "npmrc", src = "secrets/npmrc" },
             { id = "token", env = "API_TOKEN", target = "/root/.token" }]
  cache = ["/var/cache/apt", { target = "/root/.cache/pip", id = "pip", sharing = "locked" }]
"""


def write(tmp_path: Path, text: str = RECIPE) -> Path:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "npmrc").write_text("//registry/:_authToken=abc\n")
    (tmp_path / "recipe.toml").write_text(text)
    return tmp_path / "recipe.toml"


def test_a_run_step_reads_its_secrets_and_cache_folders(tmp_path: Path) -> None:
    step = load_recipe(write(tmp_path)).stages[0].steps[0]
    assert isinstance(step, RunStep)
    assert step.secrets == (
        SecretMount(id="npmrc", src="secrets/npmrc"),
        SecretMount(id="token", env="API_TOKEN", target="/root/.token"),
    )
    assert [secret.path for secret in step.secrets] == ["/run/secrets/npmrc", "/root/.token"]
    assert (step.secrets[0].key, step.secrets[0].line) == ("stages[0].steps[0].secrets[0]", 10)
    assert step.cache == (
        CacheMount(target="/var/cache/apt"),
        CacheMount(target="/root/.cache/pip", id="pip", sharing=CacheSharing.LOCKED),
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'secrets = [{ id = "x", src = "/etc/shadow" }]',
            "is absolute: a recipe names secrets in the build context",
        ),
        ('secrets = [{ id = "x", src = "../up" }]', "leaves the build context"),
        ('secrets = [{ id = "a/b" }]', "is not a secret id"),
        ('secrets = [{ id = "x", src = "a", env = "B" }]', "from a file or a variable, not both"),
        ('secrets = [{ id = "x" }, { id = "x", env = "B" }]', "the secret id 'x' is given twice"),
        ('secrets = [{ src = "a" }]', "required key is missing"),
        ('cache = ["relative"]', "is not an absolute path"),
        ('cache = ["/"]', "cannot be mounted over"),
        ('cache = [{ target = "/x", sharing = "private" }]', "is not a sharing mode"),
        ('cache = ["/x", { target = "/x/" }]', "the cache target '/x' is given twice"),
        ("rebuild_on_secret_change = 1", "expected true or false"),
        ('cache = ["/a", { target = "/b", id = "/a" }]', "the cache folder \\(id\\) '/a' is given twice"),
        (
            'cache = ["/c"]\n  secrets = [{ id = "x", env = "X", target = "/c/x" }]',
            "would be mounted inside the cache folder /c",
        ),
    ],
)
def test_bad_secrets_and_caches_are_exit_2_at_their_key(tmp_path: Path, entry: str, message: str) -> None:
    text = '[image]\nname = "example.com/s"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n'
    text += f'  [[stages.steps]]\n  run = "true"\n  {entry}\n'
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe(write(tmp_path, text))
    # At the entry's last line (the secret inside a cache folder is the secret's fault).
    assert all(problem.line == 8 + entry.count("\n") for problem in caught.value.problems)


def test_only_run_steps_take_secrets(tmp_path: Path) -> None:
    text = '[image]\nname = "example.com/s"\nversion = "1"\n[[stages]]\nfrom = "scratch"\n'
    text += '  [[stages.steps]]\n  mkdir = "/x"\n  secrets = []\n'
    with pytest.raises(RecipeError, match="mkdir steps do not take 'secrets'"):
        load_recipe(write(tmp_path, text))


def test_the_command_line_names_a_secret_as_buildkit_does() -> None:
    assert parse_secrets(("id=a,src=/f", "id=b,env=V", "id=c", "id=d,type=file,source=/g")) == (
        SecretSource(id="a", file=Path("/f")),
        SecretSource(id="b", env="V"),
        SecretSource(id="c", env="c"),  # BuildKit: the variable named by the id
        SecretSource(id="d", file=Path("/g")),
    )
    for bad in ("id=a,src=x,env=y", "id=a/b", "src=x", "id=a,type=file", "id=a,foo=1", "id=a,type=env,src=x"):
        with pytest.raises(UsageError):
            parse_secrets((bad,))


def test_the_command_line_wins_and_one_id_is_one_secret(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path))
    given = SecretSource(id="npmrc", file=Path("/elsewhere/npmrc"))
    settings = resolve(recipe, Overrides(secrets=(given,)), {})
    assert settings.secrets["npmrc"] == given
    assert settings.secrets["token"].env == "API_TOKEN"
    assert settings.secrets["token"].named == str(tmp_path / "recipe.toml")
    again = RECIPE + '  [[stages.steps]]\n  run = "true"\n  secrets = [{ id = "npmrc", env = "OTHER" }]\n'
    with pytest.raises(
        RecipeError, match=re.escape("secret 'npmrc' comes from elsewhere in stages[0].steps[0]")
    ):
        resolve(load_recipe(write(tmp_path, again)), Overrides(), {})


def test_a_missing_secret_is_exit_2_where_the_recipe_names_it(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path))
    settings = resolve(recipe, Overrides(), {})
    plan = make_plan(recipe, settings)
    assert secret_ids(plan) == {"npmrc", "token"}
    with pytest.raises(RecipeError) as caught:
        check_secrets(secret_ids(plan), settings.secrets, settings.context, {})
    (problem,) = caught.value.problems
    assert str(problem).startswith(f"{tmp_path / 'recipe.toml'}:10: stages[0].steps[0].secrets[1]: ")
    assert "the variable API_TOKEN is not set" in problem.message
    (tmp_path / "secrets" / "npmrc").unlink()
    with pytest.raises(RecipeError, match=r"cannot read .*npmrc"):
        check_secrets({"npmrc"}, settings.secrets, settings.context, {})
    check_secrets({"token"}, settings.secrets, settings.context, {"API_TOKEN": "t"})
    with pytest.raises(RecipeError, match="secret 'x' has no source"):
        check_secrets({"x"}, {"x": SecretSource(id="x", named="recipe.toml")}, tmp_path, {})


def test_a_recipe_secret_may_not_lead_out_of_the_context(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("private")
    context = tmp_path / "context"
    context.mkdir()
    (context / "link").symlink_to(outside)
    from_recipe = SecretSource(id="x", file=context / "link", named="recipe.toml", key="k", line=3)
    with pytest.raises(RecipeError, match="leads out of the build context"):
        check_secrets({"x"}, {"x": from_recipe}, context, {})
    # The command line names any file.
    assert read_secret(SecretSource(id="x", file=context / "link"), context, {}) == b"private"


def test_a_step_is_keyed_by_its_secrets_ids_never_their_source_or_bytes(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path))
    step = make_plan(recipe, resolve(recipe, Overrides(), {})).stages[0].steps[0]
    moved = RECIPE.replace("secrets/npmrc", "other/npmrc").replace("API_TOKEN", "TOKEN")
    moved_recipe = load_recipe(write(tmp_path, "\n\n" + moved))  # also on other lines
    moved_step = make_plan(moved_recipe, resolve(moved_recipe, Overrides(), {})).stages[0].steps[0]
    assert definition(moved_step) == definition(step)
    retargeted = load_recipe(write(tmp_path, RECIPE.replace("/root/.token", "/root/.tok")))
    assert definition(make_plan(retargeted, resolve(retargeted, Overrides(), {})).stages[0].steps[0]) != (
        definition(step)
    )


def test_a_secret_digest_is_this_machines_own(tmp_path: Path) -> None:
    digest = secret_digest(tmp_path / "a", b"hunter2")
    assert digest == secret_digest(tmp_path / "a", b"hunter2")
    assert digest != secret_digest(tmp_path / "a", b"hunter3")
    assert digest != secret_digest(tmp_path / "b", b"hunter2")  # another machine's key
    assert oct((tmp_path / "a" / "secret-digest.key").stat().st_mode & 0o777) == "0o600"
    # A key cut short is never used (an empty one would let anyone brute-force a short secret).
    (tmp_path / "a" / "secret-digest.key").write_bytes(b"")
    assert secret_digest(tmp_path / "a", b"hunter2") != digest
    assert len((tmp_path / "a" / "secret-digest.key").read_bytes()) == 32


def test_binds_reach_buildah_run_and_their_targets_count_as_mounted(fake_run: FakeRun) -> None:
    buildah = Buildah(isolation="runc")
    binds = [
        Bind(source=Path("/dev/shm/s/npmrc"), target="/run/secrets/npmrc", read_only=True),
        Bind(source=Path("/cache/mounts/ab"), target="/var/cache/apt", read_only=False),
    ]
    buildah.run_in(
        "c", ["true"], user=None, workdir=None, env={}, network=Network.HOST, on_line=print, binds=binds
    )
    (step,) = fake_run.of("buildah")
    assert step[step.index("--mount") : step.index("--mount") + 4] == [
        "--mount", "type=bind,source=/dev/shm/s/npmrc,target=/run/secrets/npmrc,ro",
        "--mount", "type=bind,source=/cache/mounts/ab,target=/var/cache/apt,rw",
    ]  # fmt: skip
    targets = buildah.mount_targets(Network.HOST, binds)
    assert {"run", "run/secrets", "run/secrets/npmrc", "var", "var/cache", "var/cache/apt"} <= set(targets)
    with pytest.raises(BuildError, match="comma"):
        Bind(source=Path("/a,b"), target="/x", read_only=True).option()
    buildah.cleanup()


def test_stubs_go_deepest_first_and_never_through_a_symlink_out_of_the_tree(tmp_path: Path) -> None:
    root, host = tmp_path / "root", tmp_path / "host"
    (root / "run" / "secrets").mkdir(parents=True)
    (root / "run" / "secrets" / "npmrc").touch(mode=0o755)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to(host)  # absolute, as Debian's /var/run -> /run
    (host / "stub").mkdir(parents=True)
    (root / "kept").mkdir()
    (root / "kept" / "mine").touch(mode=0o644)  # made by the step: not the runtime's mode
    remove_mount_stubs(root, ["run", "run/secrets", "run/secrets/npmrc", "var/run/stub", "kept/mine"])
    assert not (root / "run").exists()
    assert (host / "stub").is_dir()  # /var/run/stub is the tree's /stub, which does not exist
    assert (root / "kept" / "mine").exists()


def test_a_cache_folder_is_one_per_id_and_arch(tmp_path: Path) -> None:
    apt = CacheMount(target="/var/cache/apt")
    assert cachemounts.directory_of(tmp_path, apt, "amd64") == cachemounts.directory_of(
        tmp_path, CacheMount(target="/var/cache/apt", sharing=CacheSharing.LOCKED), "amd64"
    )
    assert cachemounts.directory_of(tmp_path, apt, "amd64") != cachemounts.directory_of(
        tmp_path, apt, "arm64"
    )
    named = CacheMount(target="/a", id="pip")
    assert cachemounts.directory_of(tmp_path, named, "amd64") == cachemounts.directory_of(
        tmp_path, CacheMount(target="/b", id="pip"), "amd64"
    )
    with cachemounts.held(tmp_path, [apt, named], "amd64") as held:
        assert [target for _, target in held] == ["/var/cache/apt", "/a"]
        (held[0][0] / "archive.deb").write_bytes(b"x" * 10)
        listed = cachemounts.listing(tmp_path)
        assert sorted(entry.id for entry in listed) == ["/var/cache/apt", "pip"]
        # A step holds it: prune leaves it.
        assert not any(cachemounts.remove(entry) for entry in listed)
    listed = cachemounts.listing(tmp_path)
    assert {entry.id: entry.size for entry in listed} == {"/var/cache/apt": 10, "pip": 0}
    assert all(cachemounts.remove(entry) for entry in listed)
    assert cachemounts.listing(tmp_path) == []
    assert list((tmp_path / cachemounts.MOUNTS_DIR).iterdir()) == []


def test_a_locked_cache_is_one_steps_at_a_time(tmp_path: Path) -> None:
    mount = CacheMount(target="/var/cache/apt", sharing=CacheSharing.LOCKED)
    directory = cachemounts.directory_of(tmp_path, mount, "amd64")
    directory.parent.mkdir(parents=True)
    lock = os.open(directory.with_suffix(".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another build's locked step
    entered, leave = threading.Event(), threading.Event()

    def step() -> None:
        with cachemounts.held(tmp_path, [mount], "amd64"):
            entered.set()
            leave.wait(60)

    thread = threading.Thread(target=step)
    thread.start()
    try:
        # Shared holders would get in at once; a locked one waits for the other build.
        assert not entered.wait(0.5)
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert entered.wait(60)
    finally:
        leave.set()
        thread.join(60)
        os.close(lock)


def test_a_secret_file_in_the_context_is_never_copied(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "app.py").write_text("print()")
    context_filter = load_filter(tmp_path, tmp_path / "dist", [tmp_path / "secrets" / "npmrc"])
    copy = select(context_filter, (".",))
    copied = {os.path.relpath(entry, tmp_path) for entry in copy.entries}
    assert "app.py" in copied
    assert "secrets/npmrc" not in copied
    # buildah is told to leave it out, and the output folder, whether it exists yet or not.
    assert {"secrets/npmrc", "dist"} <= set(copy.excluded)
    with pytest.raises(BuildError, match="build secret's file") as caught:
        select(context_filter, ("secrets/npmrc",))
    assert "never copied into the image" in (caught.value.hint or "")
    # Named through a link, the file the link reaches is the secret's.
    (tmp_path / "npmrc-link").symlink_to("secrets/npmrc")
    linked = select(load_filter(tmp_path, tmp_path / "dist", [tmp_path / "npmrc-link"]), (".",))
    assert "secrets/npmrc" not in {os.path.relpath(entry, tmp_path) for entry in linked.entries}
