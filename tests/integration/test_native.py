"""The hot path compiled by mypyc (setup.py): in use, identical in output, and never stale."""

from __future__ import annotations

import importlib.machinery
import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dualbuild.layer.bytecode
import dualbuild.layer.diff
import dualbuild.layer.feed
import dualbuild.layer.tarwriter
import dualbuild.layer.tree
from tests.support import ROOT, build_rich_tree, require

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
COMPILED = [
    dualbuild.layer.tree,
    dualbuild.layer.tarwriter,
    dualbuild.layer.feed,
    dualbuild.layer.bytecode,
    dualbuild.layer.diff,
]

# Every format written from one tree, walked as a build walks it; prints each artifact's sha256
# and where tree.py came from.
EXPORT = """
import json, sys
from pathlib import Path
import dualbuild.layer.tree
from dualbuild.emit import run_emitters
from dualbuild.emit.artifact import ImageSpec
from dualbuild.imageconfig import ImageConfig
from dualbuild.recipe.model import Format, Image
root, out = Path(sys.argv[1]), Path(sys.argv[2])
tree = dualbuild.layer.tree.stream(root, 1700000000)
targets = {Format.DOCKER: out / "x.docker.tar", Format.ACI: out / "x.aci", Format.OCI: out / "x.oci.tar"}
image = Image(name="example.com/x", version="1")
spec = ImageSpec(image=image, config=ImageConfig(), source_date_epoch=1700000000)
artifacts = run_emitters(tree, spec, targets)
print(json.dumps({"tree": dualbuild.layer.tree.__file__, **{str(a.format): a.sha256 for a in artifacts}}))
"""


def compiled() -> bool:
    # Only the suffix of __file__ counts: mypyc sets a wrong directory on a module its shared
    # library initialises first (dualbuild/dualbuild/tree...so), which is harmless.
    return all((module.__file__ or "").endswith(SUFFIX) for module in COMPILED)


def package_copy(destination: Path, *, with_compiled: bool) -> Path:
    """A checkout's copy of the dualbuild package under ``destination``, to import from ahead of ours."""
    skip = () if with_compiled else ("*" + SUFFIX,)
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "setup.py", destination)  # what marks a checkout
    shutil.copytree(
        ROOT / "dualbuild", destination / "dualbuild", ignore=shutil.ignore_patterns("__pycache__", *skip)
    )
    return destination


def run_python(code: str, *args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` importing dualbuild from ``path`` if given (else the installed one)."""
    env = dict(os.environ, PYTHONPATH=str(path)) if path else dict(os.environ)
    # Not from the checkout: `python -c` puts the working directory first on sys.path.
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120,
        check=False, cwd="/",
    )  # fmt: skip


def test_the_hot_path_runs_compiled() -> None:
    # `make native` (part of `make test`) compiles them; CI must test what users run.
    require(compiled(), "layer/tree, tarwriter and feed compiled by `make native`")
    assert {Path(m.__file__ or "").name.removesuffix(SUFFIX) for m in COMPILED} == {
        "tree",
        "tarwriter",
        "feed",
        "bytecode",
        "diff",
    }
    assert sorted(
        path.relative_to(ROOT / "dualbuild").as_posix().removesuffix(SUFFIX)
        for path in (ROOT / "dualbuild").rglob("*" + SUFFIX)
    ) == [
        "layer/_native__mypyc",
        "layer/bytecode",
        "layer/diff",
        "layer/feed",
        "layer/tarwriter",
        "layer/tree",
    ]


def test_compiled_and_pure_modules_write_the_same_bytes(tmp_path: Path) -> None:
    require(compiled(), "layer/tree, tarwriter and feed compiled by `make native`")
    root = build_rich_tree(tmp_path / "root", privileged=os.geteuid() == 0)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    # A timestamp pyc whose source the clamp changes: its header is rewritten too.
    (root / "mod.py").write_text("ANSWER = 42\n")
    os.utime(root / "mod.py", (1_800_000_000, 1_800_000_000))
    py_compile.compile(str(root / "mod.py"), invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    results = {}
    for kind, path in (
        ("compiled", None),
        ("pure", package_copy(tmp_path / "pure-package", with_compiled=False)),
    ):
        out = tmp_path / kind
        out.mkdir()
        result = run_python(EXPORT, str(root), str(out), path=path)
        assert result.returncode == 0, result.stderr
        results[kind] = json.loads(result.stdout)
    assert results["compiled"].pop("tree").endswith(SUFFIX)
    assert results["pure"].pop("tree").endswith("tree.py")
    assert results["compiled"] == results["pure"]
    assert set(results["pure"]) == {"docker", "aci", "oci"}


def test_a_source_newer_than_its_compiled_module_is_reported(tmp_path: Path) -> None:
    require(compiled(), "layer/tree, tarwriter and feed compiled by `make native`")
    copy = package_copy(tmp_path, with_compiled=True)
    quiet = run_python("import dualbuild.layer.tree", path=copy)
    assert quiet.returncode == 0, quiet.stderr
    assert "RuntimeWarning" not in quiet.stderr
    source = copy / "dualbuild" / "layer" / "tree.py"
    later = (copy / "dualbuild" / "layer" / f"tree{SUFFIX}").stat().st_mtime_ns + 10**9
    os.utime(source, ns=(later, later))
    stale = run_python("import dualbuild.layer.tree", path=copy)
    assert stale.returncode == 0, stale.stderr
    assert f"{source} is newer than its compiled module tree{SUFFIX}" in stale.stderr
    assert "make native" in stale.stderr
    # Installed (no setup.py beside the package), unpacking order sets the times: no check.
    (copy / "setup.py").unlink()
    installed = run_python("import dualbuild.layer.tree", path=copy)
    assert installed.returncode == 0, installed.stderr
    assert "RuntimeWarning" not in installed.stderr


@pytest.mark.parametrize("name", ["tree", "tarwriter", "feed", "bytecode"])
def test_no_compiled_module_is_older_than_its_source(name: str) -> None:
    # What the import-time warning checks, as a test: a suite run on stale code fails.
    compiled_module = ROOT / "dualbuild" / "layer" / f"{name}{SUFFIX}"
    require(compiled_module.exists(), f"dualbuild/layer/{name} compiled by `make native`")
    source = ROOT / "dualbuild" / "layer" / f"{name}.py"
    assert source.stat().st_mtime_ns <= compiled_module.stat().st_mtime_ns
