"""The benchmark trees, made once and cached (default ~/.cache/dualbuild-bench).

* ``minbase``: a Debian bookworm minbase root filesystem made with mmdebstrap, kept as
  ``minbase.tar`` (what recipe (a) starts from) and extracted to ``trees/minbase``.
* ``files10k`` / ``files100k``: synthetic trees of small files (10,000 / 100,000 files in
  100-file directories). Sizes are log-normal (median ~1.1 KiB, capped at 64 KiB); contents
  are slices of a mixed text/binary corpus, so they compress about like real files. The same
  seed and layout make both, so 100k is exactly 10x the work of 10k.
* ``big2g``: one 2 GiB file. Every 64 KiB block is 32 KiB of random bytes and 32 KiB of text,
  so gzip has real work (it compresses to a bit over half) and no trick shortens it.

A tree directory is complete when its ``.complete`` stamp exists (written last), so an
interrupted generation is redone, never used half made. The stamp holds the recipe of the
tree; changing a parameter here makes every cache regenerate.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from benchenv import log

TREE_NAMES = ("minbase", "files10k", "files100k", "big2g")
STAMP = ".complete"
_SEED = 20260801
_FILES_PER_DIR = 100
_DIRS_PER_GROUP = 10
_BIG_SIZE = 2 << 30
_BLOCK = 64 << 10
_WORDS = (  # noqa: SIM905 - one readable string of words
    "the quick brown fox jumps over lazy dog image layer tar gzip manifest rootfs config "
    "usr lib bin share doc locale x86_64 linux gnu so debian package version depends "
    "#include <stdio.h> int main(void) { return 0; } def __init__(self): pass import os"
).split()


def tree_dir(cache: Path, name: str) -> Path:
    """Where a tree's directory lives in the cache (the image root)."""
    return cache / "trees" / name / "root"


def ensure_tree(cache: Path, name: str, *, minbase_seed: Path | None = None) -> Path:
    """Make ``name`` under ``cache`` unless it is already complete; return its root directory."""
    makers: dict[str, Callable[[Path], dict[str, object]]] = {
        "minbase": lambda root: _extract_minbase(ensure_minbase_tar(cache, seed=minbase_seed), root),
        "files10k": lambda root: _make_small_files(root, 10_000),
        "files100k": lambda root: _make_small_files(root, 100_000),
        "big2g": _make_big_file,
    }
    if name not in makers:
        raise SystemExit(f"unknown tree {name!r}; known: {', '.join(TREE_NAMES)}")
    root = tree_dir(cache, name)
    stamp = root.parent / STAMP
    if stamp.exists():
        return root
    if root.parent.exists():
        shutil.rmtree(root.parent)
    root.mkdir(parents=True)
    log(f"making tree {name} in {root} (cached for later runs)")
    facts = makers[name](root)
    facts.update(_count(root))
    stamp.write_text(json.dumps(facts, indent=2) + "\n")
    return root


def tree_facts(cache: Path, name: str) -> dict[str, object]:
    """What the stamp says about a tree: entries, files, bytes, how it was made."""
    data = json.loads((tree_dir(cache, name).parent / STAMP).read_text())
    return data if isinstance(data, dict) else {}


def ensure_minbase_tar(cache: Path, *, seed: Path | None = None) -> Path:
    """``minbase.tar`` in the cache: copied from ``seed`` if given, else made with mmdebstrap."""
    tarball = cache / "minbase.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / "minbase.tar.partial.tar"
    partial.unlink(missing_ok=True)
    if seed is not None:
        log(f"copying {seed} to {tarball}")
        shutil.copyfile(seed, partial)
    else:
        log("making minbase.tar with mmdebstrap (Debian mirror needed, ~25 s)")
        # The file name decides mmdebstrap's output format: keep a .tar suffix on the partial.
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", str(partial)], check=True)
    partial.rename(tarball)
    return tarball


def _extract_minbase(tarball: Path, root: Path) -> dict[str, object]:
    # As root, tar keeps owners, modes, device nodes and xattrs: the tree buildah would mount.
    subprocess.run(
        ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball)],
        check=True,
    )
    return {"made_from": str(tarball), "tarball_bytes": tarball.stat().st_size}


def _corpus(rng: random.Random) -> bytes:
    """4 MiB of mixed content: runs of words (text, config, source) and random bytes (binaries)."""
    parts: list[bytes] = []
    size = 0
    while size < 4 << 20:
        if rng.random() < 0.6:
            part = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 400))).encode() + b"\n"
        else:
            part = rng.randbytes(rng.randint(256, 8192))
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _make_small_files(root: Path, count: int) -> dict[str, object]:
    rng = random.Random(_SEED)
    corpus = _corpus(rng)
    total = 0
    for index in range(count):
        group, rest = divmod(index, _FILES_PER_DIR * _DIRS_PER_GROUP)
        directory = root / f"g{group:03d}" / f"d{rest // _FILES_PER_DIR:02d}"
        if index % _FILES_PER_DIR == 0:
            directory.mkdir(parents=True, exist_ok=True)
        size = min(int(rng.lognormvariate(7.0, 1.2)), 64 << 10)
        offset = rng.randrange(0, len(corpus) - size)
        fd = os.open(directory / f"f{index:06d}.dat", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, corpus[offset : offset + size])
        finally:
            os.close(fd)
        total += size
    return {"files_requested": count, "seed": _SEED}


def _make_big_file(root: Path) -> dict[str, object]:
    rng = random.Random(_SEED)
    text = (" ".join(rng.choice(_WORDS) for _ in range(12_000)).encode() * 2)[: _BLOCK // 2]
    with open(root / "big.bin", "wb", buffering=0) as out:
        written = 0
        while written < _BIG_SIZE:
            chunk = b"".join(rng.randbytes(_BLOCK // 2) + text for _ in range(16))  # 1 MiB
            out.write(chunk)
            written += len(chunk)
    return {"big_file_bytes": _BIG_SIZE, "seed": _SEED}


def _count(root: Path) -> dict[str, object]:
    entries = files = size = 0
    for directory, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return {"entries": entries, "regular_files": files, "bytes": size}
