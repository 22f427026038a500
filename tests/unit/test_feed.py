"""The shared layer feed and the byte-level writers under it: fast headers, gzip, stages."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualbuild.errors import BuildError
from dualbuild.layer.feed import DirectLayer, LayerFeed
from dualbuild.layer.tarwriter import (
    CHUNK,
    BackgroundStage,
    GzipWriter,
    HeaderPacker,
    tarfile_entry_header,
)
from dualbuild.layer.tree import Entry, EntryType, Tree, snapshot
from tests.support import HANG_SECONDS, SDE, build_rich_tree

PROPERTY = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
PREFIXES = ["", "rootfs/"]


# File names as a tree holds them: any character but "/" and NUL (a generated "/" made the
# entry path "/", which no tree has, and the suite flaky).
names = st.text(
    alphabet=st.sampled_from("abcXYZ019._-é\udce9 ") | st.characters(codec="utf-8", exclude_characters="/\0"),
    min_size=1,
    max_size=60,
)
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
ids = st.one_of(st.integers(0, 70_000), st.integers(0, 2**22))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind = draw(st.sampled_from(list(EntryType)))
    long_paths = st.text(alphabet="ab/", min_size=90, max_size=110).filter(
        lambda p: "//" not in p and not p.startswith("/") and not p.endswith("/")
    )
    path = draw(paths | long_paths)
    targets = paths | paths.map(lambda p: "/" + p)  # a symlink may point at an absolute path
    link = draw(targets) if kind in (EntryType.SYMLINK, EntryType.HARDLINK) else ""
    device = kind in (EntryType.CHAR, EntryType.BLOCK)
    xattr_names = st.sampled_from(["user.a", "user.b", "security.capability"])
    xattrs = draw(
        st.lists(st.tuples(xattr_names, st.binary(max_size=8)), max_size=2, unique_by=lambda x: x[0])
    )
    major = draw(st.integers(0, 4095)) if device else 0
    minor = draw(st.integers(0, 2**20)) if device else 0
    size = draw(st.one_of(st.integers(0, 2**20), st.integers(0, 2**34))) if kind is EntryType.FILE else 0
    return Entry(
        path=path, type=kind, mode=draw(st.integers(0, 0o7777)), uid=draw(ids), gid=draw(ids), size=size,
        mtime=draw(st.integers(0, 2 * SDE)), link_target=link, devmajor=major, devminor=minor,
        xattrs=tuple(sorted(xattrs)),
    )  # fmt: skip


@PROPERTY
@given(entries())
def test_packed_headers_equal_tarfile_headers_byte_for_byte(entry: Entry) -> None:
    expected = [tarfile_entry_header(entry, prefix, SDE) for prefix in PREFIXES]
    assert HeaderPacker(PREFIXES, SDE)(entry) == expected
    assert HeaderPacker(["rootfs/", ""], SDE)(entry) == expected[::-1]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=3 * CHUNK // 1024).map(lambda b: b * 1024), st.lists(st.integers(1, 2 * CHUNK)))
def test_gzip_bytes_do_not_depend_on_how_the_input_is_cut(data: bytes, cuts: list[int]) -> None:
    def compressed(pieces: list[bytes]) -> bytes:
        out: list[bytes] = []
        sink = type("Sink", (), {"write": lambda self, chunk: out.append(bytes(chunk))})()
        writer = GzipWriter(sink)
        for piece in pieces:
            writer.write(piece)
        writer.close()
        return b"".join(out)

    pieces, position = [], 0
    for cut in cuts:
        pieces.append(data[position : position + cut])
        position += cut
    pieces.append(data[position:])
    whole = compressed([data])
    assert compressed(pieces) == whole
    assert gzip.decompress(whole) == data


def layer_bytes(layer: DirectLayer) -> bytes:
    out: list[bytes] = []
    layer.write_to(type("Sink", (), {"write": lambda self, chunk: out.append(bytes(chunk))})())
    return b"".join(out)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = build_rich_tree(tmp_path / "root", privileged=os.geteuid() == 0)
    (root / "big.bin").write_bytes(os.urandom(3 * CHUNK + 5))  # the chunked path, with padding
    return snapshot(root, SDE)


def run_feed(feed: LayerFeed) -> threading.Thread:
    thread = threading.Thread(target=feed.run)
    thread.start()
    return thread


def collect(subscription: object, out: dict[str, bytes], name: str) -> threading.Thread:
    chunks: list[bytes] = []

    def work() -> None:
        try:
            subscription.write_to(type("Sink", (), {"write": lambda self, c: chunks.append(bytes(c))})())  # type: ignore[attr-defined]
            out[name] = b"".join(chunks)
        except BuildError as error:
            out[name] = str(error).encode()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_every_subscriber_gets_exactly_the_layer_a_lone_emitter_writes(tree: Tree) -> None:
    feed = LayerFeed(tree, mtime_clamp=SDE)
    subscriptions = {"a": feed.subscribe(""), "b": feed.subscribe("rootfs/"), "c": feed.subscribe("")}
    out: dict[str, bytes] = {}
    workers = [collect(subscription, out, name) for name, subscription in subscriptions.items()]
    run_feed(feed).join(HANG_SECONDS)
    for worker in workers:
        worker.join(HANG_SECONDS)
    plain = layer_bytes(DirectLayer(tree, prefix="", mtime_clamp=SDE))
    prefixed = layer_bytes(DirectLayer(tree, prefix="rootfs/", mtime_clamp=SDE))
    assert out["a"] == out["c"] == plain
    assert out["b"] == prefixed
    assert plain != prefixed


def test_a_subscriber_that_gives_up_does_not_stop_the_others(tree: Tree) -> None:
    feed = LayerFeed(tree, mtime_clamp=SDE)
    quitter = feed.subscribe("")
    stayer = feed.subscribe("rootfs/")
    quitter.abandon()  # e.g. its emitter failed before reading (a bad app user)
    out: dict[str, bytes] = {}
    worker = collect(stayer, out, "stayer")
    producer = run_feed(feed)
    producer.join(HANG_SECONDS)
    worker.join(HANG_SECONDS)
    assert not producer.is_alive()
    assert (
        hashlib.sha256(out["stayer"]).digest()
        == hashlib.sha256(layer_bytes(DirectLayer(tree, prefix="rootfs/", mtime_clamp=SDE))).digest()
    )


def test_a_producer_error_reaches_every_subscriber(tree: Tree) -> None:
    (tree.root / "file").write_text("changed size\n")
    feed = LayerFeed(tree, mtime_clamp=SDE)
    subscriptions = [feed.subscribe(""), feed.subscribe("rootfs/")]
    out: dict[str, bytes] = {}
    workers = [collect(s, out, str(n)) for n, s in enumerate(subscriptions)]
    run_feed(feed).join(HANG_SECONDS)
    for worker in workers:
        worker.join(HANG_SECONDS)
    for text in out.values():
        assert b"/file changed while the image was being written" in text


def test_a_background_stage_hands_its_error_to_the_writer() -> None:
    class Failing:
        def write(self, data: bytes | bytearray | memoryview, /) -> None:
            raise OSError(28, "No space left on device")

    def write_a_lot() -> None:
        with BackgroundStage(Failing()) as stage:
            for _ in range(100):
                stage.write(b"x" * 1024)

    with pytest.raises(OSError, match="No space left"):
        write_a_lot()


def test_a_background_stage_writes_everything_in_order() -> None:
    got: list[bytes] = []
    with BackgroundStage(type("Sink", (), {"write": lambda self, c: got.append(c)})()) as stage:
        for number in range(1000):
            stage.write(b"%d," % number)
    assert b"".join(got) == b"".join(b"%d," % n for n in range(1000))


def test_entries_across_many_batches_keep_their_order_and_contents(tmp_path: Path) -> None:
    # Entries are read, given headers and written in batches (feed._BATCH): this tree
    # spans several, with big files (streamed, not batched) and symlinks among small ones.
    root = tmp_path / "root"
    expected: dict[str, bytes] = {}
    for directory in range(3):
        (root / f"d{directory}").mkdir(parents=True)
        for number in range(300):
            name = f"d{directory}/f{number:03d}"
            size = 70_000 + number if number % 97 == 0 else number * 7
            expected[name] = os.urandom(size)
            (root / name).write_bytes(expected[name])
        (root / f"d{directory}/link").symlink_to("f000")
    tree = snapshot(root, SDE)
    layer = layer_bytes(DirectLayer(tree, prefix="rootfs/", mtime_clamp=SDE))
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == ["rootfs/" + entry.path for entry in tree.entries]
        contents = {
            m.name.removeprefix("rootfs/"): archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in members
            if m.isfile()
        }
    assert contents == expected
    assert [m.linkname for m in members if m.issym()] == ["f000"] * 3
