#!/usr/bin/env python3
"""Micro-benchmarks behind the findings in BENCHMARKS.md: what each lever of issue 8 would buy.

Nothing here changes dualbuild; each lever is measured on this machine, on the cached bench
trees (run bench/run.py once first to make them):

  headers   per-entry cost of dualbuild.layer.tarwriter.tar_header (tarfile.TarInfo.tobuf) vs a
            struct-packed ustar header, checked byte-identical on every entry of the trees
  reads     per-file cost of opening and reading every small file (what each emitter pays)
  engines   single-core throughput of sha256, sha512, crc32, isal level 2, zlib level 6, and
            whether two threads scale (the GIL is released) for each
  gpg       `gpg --detach-sign` of a 1 GiB file vs sha256sum/sha512sum of it, and the digest
            gpg picks; and gpg reading the same bytes from a pipe
  fsync     writing 2 GiB then fsync vs without fsync
  threads   the two emitters one after the other vs in parallel threads (run_emitters), per tree

usage: levers.py [--cache-dir DIR] [--only headers,reads,engines,gpg,fsync]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import trees
from benchenv import sandbox

from dualbuild.layer.tarwriter import _TAR_TYPES, tarfile_entry_header
from dualbuild.layer.tree import Entry, EntryType, Tree, snapshot

LEVERS = ("headers", "reads", "engines", "gpg", "fsync", "threads")
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_NO_DEV = b"\0" * 8


def fast_header(entry: Entry, prefix: str, clamp: int) -> bytes | None:
    """The ustar header tarfile would write in PAX format, or None when a PAX record is needed."""
    if entry.xattrs:
        return None
    name = (prefix + entry.path).encode("utf-8", "surrogateescape")
    link = entry.link_target
    if entry.type is EntryType.HARDLINK:
        link = prefix + link
    linkname = link.encode("utf-8", "surrogateescape")
    kind = _TAR_TYPES[entry.type]
    if kind == tarfile.DIRTYPE and not name.endswith(b"/"):
        name += b"/"
    if (
        len(name) > 100
        or len(linkname) > 100
        or not name.isascii()
        or not linkname.isascii()
        or entry.uid >= 8**7
        or entry.gid >= 8**7
        or entry.size >= 8**11
    ):
        return None
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        devmajor, devminor = b"%07o\0" % entry.devmajor, b"%07o\0" % entry.devminor
    else:
        devmajor = devminor = _NO_DEV
    block = bytearray(
        _USTAR.pack(
            name,
            b"%07o\0" % (entry.mode & 0o7777),
            b"%07o\0" % entry.uid,
            b"%07o\0" % entry.gid,
            b"%011o\0" % entry.size,
            b"%011o\0" % min(entry.mtime, clamp),
            b"        ",
            kind,
            linkname,
            b"ustar\x0000",
            b"",
            b"",
            devmajor,
            devminor,
            b"",
            b"",
        )
    )
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def lever_headers(tree_map: dict[str, Tree]) -> None:
    print("## headers: µs per entry (one emitter's share; both emitters pay it)")
    for name, tree in tree_map.items():
        clamp = tree.source_date_epoch
        fallbacks = mismatches = 0
        for prefix in ("", "rootfs/"):
            for entry in tree.entries:
                fast = fast_header(entry, prefix, clamp)
                if fast is None:
                    fallbacks += 1
                elif fast != tarfile_entry_header(entry, prefix, clamp):
                    mismatches += 1
        slow_s = _per_entry(lambda e, c=clamp: tarfile_entry_header(e, "rootfs/", c), tree)
        fast_s = _per_entry(lambda e, c=clamp: fast_header(e, "rootfs/", c), tree)
        print(
            f"{name}: {len(tree.entries)} entries; tarfile {slow_s * 1e6:.1f} µs, "
            f"struct {fast_s * 1e6:.1f} µs "
            f"({slow_s / fast_s:.0f}x); total per emitter {slow_s * len(tree.entries):.2f} s vs "
            f"{fast_s * len(tree.entries):.2f} s; byte-identical: {mismatches == 0} "
            f"({mismatches} mismatches, {fallbacks} entries need the tarfile path)"
        )


def _per_entry(make: Callable[[Entry], object], tree: Tree) -> float:
    start = time.perf_counter()
    for entry in tree.entries:
        make(entry)
    return (time.perf_counter() - start) / len(tree.entries)


def lever_reads(tree_map: dict[str, Tree]) -> None:
    print("## reads: open + fstat + read + read(1) + close of every regular file, page cache warm")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    for name, tree in tree_map.items():
        files = [e for e in tree.entries if e.type is EntryType.FILE and e.size <= 64 << 10]
        if not files:
            continue
        before, start = os.times(), time.perf_counter()
        for entry in files:
            fd = os.open(tree.source_path(entry), flags)
            try:
                os.fstat(fd)
                os.read(fd, entry.size)
                os.read(fd, 1)
            finally:
                os.close(fd)
        seconds, after = time.perf_counter() - start, os.times()
        print(
            f"{name}: {len(files)} files in {seconds:.2f} s = {seconds / len(files) * 1e6:.1f} µs/file "
            f"(user {after.user - before.user:.2f} s, sys {after.system - before.system:.2f} s)"
        )


def lever_engines(cache: Path) -> None:
    big = trees.tree_dir(cache, "big2g") / "big.bin"
    mixed = (os.urandom(1 << 19) + b"the quick brown fox " * 26215)[: 1 << 20] * 256
    _engines("1 MiB of half random, half text, repeated (256 MiB)", mixed)
    if big.exists():
        with open(big, "rb") as source:
            _engines("the first 256 MiB of the big2g file", source.read(256 << 20))


def _engines(what: str, data: bytes) -> None:
    print(f"## engines on {what}: MB/s on one core, and with 2 threads (each on its own copy)")
    from isal import isal_zlib

    chunks = [memoryview(data)[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]

    def sha256() -> None:
        h = hashlib.sha256()
        for c in chunks:
            h.update(c)

    def sha512() -> None:
        h = hashlib.sha512()
        for c in chunks:
            h.update(c)

    def crc32() -> None:
        crc = 0
        for c in chunks:
            crc = isal_zlib.crc32(c, crc)

    def isal2() -> None:
        z = isal_zlib.compressobj(2, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        for c in chunks:
            z.compress(c)
        z.flush()

    compressed = [0]

    def isal2_size() -> None:
        z = isal_zlib.compressobj(2, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        compressed[0] = sum(len(z.compress(c)) for c in chunks) + len(z.flush())

    def zlib6() -> None:
        z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        for c in chunks[:32]:
            z.compress(c)
        z.flush()

    sizes = {"zlib level 6": 32 << 20}
    for label, job in {"sha256": sha256, "sha512": sha512, "crc32 (isal)": crc32, "isal level 2": isal2,
                       "zlib level 6": zlib6}.items():  # fmt: skip
        size = sizes.get(label, len(data))
        one = _timed(job)
        threads = [threading.Thread(target=job) for _ in range(2)]
        two = _timed(lambda ts=threads: ([t.start() for t in ts], [t.join() for t in ts]))
        print(
            f"{label}: {size / one / 1e6:.0f} MB/s on one core; 2 threads: {2 * size / two / 1e6:.0f} MB/s "
            f"({'scales: GIL released' if one * 1.4 > two else 'does NOT scale: GIL held'})"
        )
    isal2_size()
    print(f"isal level 2 output: {compressed[0] / len(data):.0%} of the input")


def _timed(job: Callable[[], object]) -> float:
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


def lever_gpg(scratch: Path) -> None:
    print("## gpg: detached signature of 1 GiB vs hashing it")
    blob = scratch / "blob"
    with open(blob, "wb") as out:
        for _ in range(1024):
            out.write(os.urandom(1 << 20))
    with sandbox() as box:
        env = box.env()
        key = box.fingerprint
        sig = scratch / "blob.asc"
        argv = [
            "gpg",
            "--batch",
            "--yes",
            "--armor",
            "--detach-sign",
            "--local-user",
            key,
            "--output",
            str(sig),
        ]
        for label, command in {
            "sha256sum": ["sha256sum", str(blob)],
            "sha512sum": ["sha512sum", str(blob)],
            "gpg --detach-sign FILE": [*argv, str(blob)],
        }.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            print(f"{label}: {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        with open(blob, "rb") as source:
            subprocess.run([*argv, "-"], env=env, check=True, capture_output=True, stdin=source)
        print(f"gpg --detach-sign from stdin: {time.perf_counter() - start:.2f} s")
        listing = subprocess.run(
            ["gpg", "--batch", "--list-packets", str(sig)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        digest = next((line.strip() for line in listing.splitlines() if "digest algo" in line), "?")
        print(f"signature packet: {digest} (2=SHA1, 8=SHA256, 10=SHA512)")
        for algo in ("SHA512", "SHA256"):
            start = time.perf_counter()
            subprocess.run(
                [*argv, "--digest-algo", algo, str(blob)], env=env, check=True, capture_output=True
            )
            print(f"gpg --digest-algo {algo}: {time.perf_counter() - start:.2f} s")


def lever_fsync(scratch: Path) -> None:
    print("## fsync: write 2 GiB in 1 MiB chunks, with and without fsync at the end")
    chunk = os.urandom(1 << 20)
    for do_sync in (False, True):
        path = scratch / "big"
        start = time.perf_counter()
        with open(path, "wb", buffering=0) as out:
            for _ in range(2048):
                out.write(chunk)
            written = time.perf_counter() - start
            if do_sync:
                os.fsync(out.fileno())
        total = time.perf_counter() - start
        print(f"fsync={do_sync}: write {written:.2f} s, total {total:.2f} s")
        path.unlink()
        os.sync()


def lever_threads(tree_map: dict[str, Tree], scratch: Path) -> None:
    print("## threads: Docker then ACI in one thread, vs both at once in run_emitters' threads")
    from dualbuild.emit import EMITTERS, run_emitters
    from dualbuild.emit.artifact import ImageSpec
    from dualbuild.imageconfig import ImageConfig
    from dualbuild.recipe.model import Format, Image

    image = Image(name="example.com/bench/tree", version="1.0.0")
    for name, tree in tree_map.items():
        spec = ImageSpec(image=image, config=ImageConfig(), source_date_epoch=tree.source_date_epoch)
        targets = {Format.DOCKER: scratch / "t.docker.tar", Format.ACI: scratch / "t.aci"}
        alone = {}
        for fmt, dest in targets.items():
            os.sync()
            start = time.perf_counter()
            EMITTERS[fmt](tree, spec, dest)
            alone[fmt] = time.perf_counter() - start
        os.sync()
        start = time.perf_counter()
        run_emitters(tree, spec, targets)
        parallel = time.perf_counter() - start
        for dest in targets.values():
            dest.unlink()
        sequential = sum(alone.values())
        print(
            f"{name}: docker alone {alone[Format.DOCKER]:.2f} s, aci alone {alone[Format.ACI]:.2f} s, "
            f"one after the other {sequential:.2f} s; in parallel threads {parallel:.2f} s "
            f"({parallel / sequential:.2f} of sequential)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "dualbuild-bench"
    parser.add_argument("--cache-dir", type=Path, default=default_cache)
    parser.add_argument("--only", default=",".join(LEVERS))
    args = parser.parse_args()
    only = args.only.split(",")
    cache = args.cache_dir.expanduser()
    tree_map: dict[str, Tree] = {}
    if {"headers", "reads", "threads"} & set(only):
        for name in ("minbase", "files100k"):
            root = trees.tree_dir(cache, name)
            if not (root.parent / trees.STAMP).exists():
                sys.exit(f"tree {name} is not made yet: run bench/run.py first")
            tree_map[name] = snapshot(root, 1700000000)
    with tempfile.TemporaryDirectory(prefix="levers-", dir=cache) as scratch:
        for lever in only:
            if lever == "headers":
                lever_headers(tree_map)
            elif lever == "reads":
                lever_reads(tree_map)
            elif lever == "engines":
                lever_engines(cache)
            elif lever == "gpg":
                lever_gpg(Path(scratch))
            elif lever == "fsync":
                lever_fsync(Path(scratch))
            elif lever == "threads":
                lever_threads(tree_map, Path(scratch))
            else:
                sys.exit(f"unknown lever {lever!r}; known: {', '.join(LEVERS)}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
