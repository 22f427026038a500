"""Timestamp pycs stay valid when the layer clamps their sources' mtimes (issue 16)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import os
import py_compile
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from dualbuild.layer.feed import DirectLayer, LayerFeed
from dualbuild.layer.tarwriter import CHUNK
from dualbuild.layer.tree import snapshot, stream
from tests.support import SDE, extract_trusted

TAG = sys.implementation.cache_tag
LATER = SDE + 86_400  # what a build's files get: newer than the epoch, so clamped
OLDER = SDE - 86_400
PY2_MAGIC = (62211).to_bytes(2, "little") + b"\r\n"  # CPython 2.7


def write_module(root: Path, rel: str, text: str = "VALUE = 42\n", *, mtime: int = LATER) -> Path:
    source = root / rel
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    os.utime(source, (mtime, mtime))
    return source


def compile_module(
    source: Path,
    mode: py_compile.PycInvalidationMode = py_compile.PycInvalidationMode.TIMESTAMP,
    *,
    optimize: int = -1,
    cached: Path | None = None,
) -> Path:
    """What a base image or pip without SOURCE_DATE_EPOCH leaves: by default a timestamp pyc."""
    if cached is None:
        level = "" if optimize < 1 else optimize
        cached = Path(importlib.util.cache_from_source(str(source), optimization=level))
    # The name a pyc records is the one inside the image, whatever the test's folder.
    shown = "/" + source.name
    py_compile.compile(
        str(source), cfile=str(cached), dfile=shown, doraise=True, invalidation_mode=mode, optimize=optimize
    )
    return cached


def layer_of(root: Path, *, streamed: bool = False) -> bytes:
    tree = stream(root, SDE) if streamed else snapshot(root, SDE)
    out: list[bytes] = []
    DirectLayer(tree, prefix="", mtime_clamp=SDE).write_to(
        type("Sink", (), {"write": lambda self, chunk: out.append(bytes(chunk))})()
    )
    return b"".join(out)


def extract(layer: bytes, destination: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        extract_trusted(archive, destination)
    return destination


def member(layer: bytes, path: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        found = archive.extractfile(path)
        assert found is not None
        return found.read()


class NoCompiling(importlib.machinery.SourceFileLoader):
    """A loader that fails where Python would recompile a module: its pyc is stale."""

    def source_to_code(self, data: object, path: object, *, _optimize: int = -1) -> object:  # type: ignore[override]
        raise AssertionError(f"bytecode is stale: {path} would be compiled again")


def bytecode_is_used(source: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether Python, importing ``source``, takes its cached pyc as it is."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    loader = NoCompiling(source.stem, str(source))
    try:
        loader.get_code(source.stem)
    except AssertionError:
        return False
    return True


def test_a_valid_timestamp_pyc_stays_valid_once_its_source_is_clamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    source = write_module(root, "usr/lib/python3/dist-packages/pkg/mod.py")
    cached = compile_module(source)
    assert bytecode_is_used(source, monkeypatch)  # valid on disk
    image = extract(layer_of(root, streamed=True), tmp_path / "image")
    in_image = image / source.relative_to(root)
    assert in_image.stat().st_mtime == SDE  # the clamp, as before
    assert bytecode_is_used(in_image, monkeypatch)
    written = (image / cached.relative_to(root)).read_bytes()
    assert written[8:12] == SDE.to_bytes(4, "little")
    assert written[:8] + written[12:] == cached.read_bytes()[:8] + cached.read_bytes()[12:]
    assert cached.read_bytes()[8:12] == LATER.to_bytes(4, "little")  # the tree is not modified


def test_without_the_rewrite_the_clamp_made_it_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What issue 16 measured: the pyc as it was on disk, beside its clamped source.
    root = tmp_path / "root"
    source = write_module(root, "lib/mod.py")
    cached = compile_module(source)
    image = extract(layer_of(root), tmp_path / "image")
    (image / cached.relative_to(root)).write_bytes(cached.read_bytes())
    assert not bytecode_is_used(image / "lib" / "mod.py", monkeypatch)


def test_a_stale_pyc_stays_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    source = write_module(root, "lib/mod.py")
    cached = compile_module(source)
    original = cached.read_bytes()
    source.write_text("VALUE = 43\n")  # edited after compiling: same size, later mtime
    os.utime(source, (LATER + 60, LATER + 60))
    assert not bytecode_is_used(source, monkeypatch)
    layer = layer_of(root)
    assert member(layer, f"lib/__pycache__/mod.{TAG}.pyc") == original
    assert not bytecode_is_used(extract(layer, tmp_path / "image") / "lib" / "mod.py", monkeypatch)


def test_a_pyc_whose_source_size_differs_is_untouched(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = write_module(root, "lib/mod.py")
    cached = compile_module(source)
    original = cached.read_bytes()
    source.write_text("VALUE = 4200\n")
    os.utime(source, (LATER, LATER))  # mtime still matches, size does not
    assert member(layer_of(root), f"lib/__pycache__/mod.{TAG}.pyc") == original


@pytest.mark.parametrize(
    "mode", [py_compile.PycInvalidationMode.CHECKED_HASH, py_compile.PycInvalidationMode.UNCHECKED_HASH]
)
def test_hash_based_pycs_pass_through(
    tmp_path: Path, mode: py_compile.PycInvalidationMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    source = write_module(root, "lib/mod.py")
    cached = compile_module(source, mode)
    layer = layer_of(root)
    assert member(layer, f"lib/__pycache__/mod.{TAG}.pyc") == cached.read_bytes()
    assert bytecode_is_used(extract(layer, tmp_path / "image") / "lib" / "mod.py", monkeypatch)


def test_a_pyc_without_its_source_is_untouched(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = write_module(root, "lib/mod.py")
    cached = compile_module(source)
    legacy = root / "lib" / "sourceless.pyc"
    legacy.write_bytes(cached.read_bytes())
    source.unlink()
    layer = layer_of(root)
    assert member(layer, f"lib/__pycache__/mod.{TAG}.pyc") == cached.read_bytes()
    assert member(layer, "lib/sourceless.pyc") == cached.read_bytes()


def test_a_source_older_than_the_epoch_keeps_its_pyc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cached = compile_module(write_module(root, "lib/mod.py", mtime=OLDER))
    assert member(layer_of(root), f"lib/__pycache__/mod.{TAG}.pyc") == cached.read_bytes()


def test_optimized_and_legacy_pycs_are_restamped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = write_module(root, "lib/mod.py")
    optimized = compile_module(source, optimize=2)
    assert optimized.name == f"mod.{TAG}.opt-2.pyc"
    python2 = write_module(root, "py2/old.py")
    # Python 2 keeps X.pyc beside X.py, with a header of magic and mtime only.
    (root / "py2" / "old.pyc").write_bytes(PY2_MAGIC + LATER.to_bytes(4, "little") + b"c\0\0\0\0")
    (root / "py2" / "old.pyo").write_bytes(PY2_MAGIC + (LATER - 1).to_bytes(4, "little") + b"c\0\0\0\0")
    assert python2.stat().st_mtime == LATER
    layer = layer_of(root)
    assert member(layer, f"lib/__pycache__/mod.{TAG}.opt-2.pyc")[8:12] == SDE.to_bytes(4, "little")
    assert member(layer, "py2/old.pyc")[4:8] == SDE.to_bytes(4, "little")
    assert member(layer, "py2/old.pyo")[4:8] == (LATER - 1).to_bytes(4, "little")  # stale before


@pytest.mark.parametrize(
    "name",
    [
        f"mod.{TAG}.pyc.txt",  # not a pyc
        "mod.pyc",  # in __pycache__, a name needs its tag
        f"mod.{TAG}.opt.pyc",  # not an optimization level
        "mod.a.b.c.pyc",
    ],
)
def test_files_that_are_not_cached_bytecode_are_untouched(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    cached = compile_module(write_module(root, "lib/mod.py"))
    odd = cached.with_name(name)
    odd.write_bytes(cached.read_bytes())
    assert member(layer_of(root), f"lib/__pycache__/{name}") == cached.read_bytes()


def test_a_symlinked_source_is_followed_inside_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = write_module(root, "usr/share/pkg/mod.py")
    (root / "lib" / "__pycache__").mkdir(parents=True)
    (root / "lib" / "mod.py").symlink_to("/usr/share/pkg/mod.py")  # absolute: inside the image
    # Python stats through the link, so the pyc records the target's mtime and size.
    compile_module(target, cached=root / "lib" / "__pycache__" / f"mod.{TAG}.pyc")
    image = extract(layer_of(root), tmp_path / "image")
    in_image = image / "usr" / "share" / "pkg" / "mod.py"
    written = (image / "lib" / "__pycache__" / f"mod.{TAG}.pyc").read_bytes()
    seen = in_image.stat()
    assert written[8:16] == int(seen.st_mtime).to_bytes(4, "little") + seen.st_size.to_bytes(4, "little")
    assert in_image.stat().st_mtime == SDE


def test_a_big_pyc_is_restamped_while_it_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    source = write_module(root, "lib/big.py", f"DATA = {os.urandom(3 * CHUNK)!r}\n")
    cached = compile_module(source)
    assert cached.stat().st_size > 3 * CHUNK
    tree = stream(root, SDE)
    feed = LayerFeed(tree, mtime_clamp=SDE)
    subscription = feed.subscribe("")
    sizes: list[int] = []
    out: list[bytes] = []

    def keep(chunk: bytes) -> None:
        sizes.append(len(chunk))
        out.append(bytes(chunk))

    producer = threading.Thread(target=feed.run)
    producer.start()
    subscription.write_to(type("Sink", (), {"write": lambda self, chunk: keep(chunk)})())
    producer.join()
    assert max(sizes) <= CHUNK + (64 << 10) + 4096  # never the whole file at once
    image = extract(b"".join(out), tmp_path / "image")
    assert bytecode_is_used(image / "lib" / "big.py", monkeypatch)


def test_restamped_layers_do_not_depend_on_when_the_files_were_written(tmp_path: Path) -> None:
    # Same recipe and inputs, built at two different times: byte-identical layers.
    layers = []
    for when in (LATER, LATER + 3_600):
        root = tmp_path / str(when) / "root"
        compile_module(write_module(root, "lib/mod.py", mtime=when))
        cached = root / "lib" / "__pycache__" / f"mod.{TAG}.pyc"
        os.utime(cached, (when, when))
        for directory in (root / "lib" / "__pycache__", root / "lib", root):
            os.utime(directory, (when, when))
        layers.append(layer_of(root))
    assert layers[0] == layers[1]
