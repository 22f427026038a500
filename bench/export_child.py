"""The export phase of a build, alone, on a plain directory: tree → emitters → signature.

Run as a child process of bench/run.py (so its peak RSS can be read with wait4); prints one
JSON object on stdout with the phase timings. It calls dualbuild's own API, exactly what
``dualbuild build`` runs after the stages (dualbuild/pipeline.py):

    stream(root, sde) → run_emitters(tree, spec, targets, taps={aci: signer})

with the signer (fed the ACI's bytes as they are written: a SHA-256 that gpg-agent signs at
the end, or gpg itself for DSA/ECDSA keys) started before the emitters. The tree is walked
while it is written, as in a build, so "emit" includes the walk. Per-emitter wall times come
from ``run_emitters``' timings; the emitters run in parallel as in a build, so they overlap.
"sign" is the time from the end of the emit to the signature on disk.

usage: export_child.py TREE OUT_DIR --formats docker,aci [--sign-key FPR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from dualbuild.emit import run_emitters
from dualbuild.emit.artifact import ImageSpec
from dualbuild.imageconfig import ImageConfig, apply_app
from dualbuild.layer.tarwriter import Writable
from dualbuild.layer.tree import stream
from dualbuild.recipe import load_recipe
from dualbuild.recipe.model import Format
from dualbuild.sign.keys import check_signing_key
from dualbuild.sign.signer import signing_stream

SOURCE_DATE_EPOCH = 1700000000
RECIPE = """\
[image]
name = "example.com/bench/tree"
version = "1.0.0"

[[stages]]
name = "final"
from = "scratch"

[output]
source_date_epoch = {sde}
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tree", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--formats", default="docker,aci")
    parser.add_argument("--sign-key")
    parser.add_argument("--keep", action="store_true", help="keep the artifacts")
    args = parser.parse_args()

    formats = [Format(name) for name in args.formats.split(",") if name]
    args.out.mkdir(parents=True, exist_ok=True)
    recipe_path = args.out / "recipe.toml"
    recipe_path.write_text(RECIPE.format(sde=SOURCE_DATE_EPOCH))
    recipe = load_recipe(recipe_path)
    config = apply_app(ImageConfig(), recipe.app, recipe.image.labels)
    suffix = {Format.DOCKER: ".docker.tar", Format.ACI: ".aci", Format.OCI: ".oci.tar"}
    targets = {fmt: args.out / f"tree-1.0.0-linux-amd64{suffix[fmt]}" for fmt in formats}

    timings: dict[str, float] = {}
    key = None
    if args.sign_key and Format.ACI in formats:
        start = time.monotonic()
        key, _ = check_signing_key(args.sign_key, gnupghome=_gnupghome())
        timings["key_check"] = time.monotonic() - start

    emit_timings: dict[str, float] = {}
    rss_before = _maxrss_kib()

    start = time.monotonic()
    tree = stream(args.tree, SOURCE_DATE_EPOCH)
    with contextlib.ExitStack() as stack:
        taps: dict[Format, Writable] = {}
        if key is not None:
            aci = targets[Format.ACI]
            signature = aci.with_name(aci.name + ".asc")
            taps[Format.ACI] = stack.enter_context(signing_stream(aci.name, signature, key))
        spec = ImageSpec(image=recipe.image, config=config, source_date_epoch=SOURCE_DATE_EPOCH)
        artifacts = run_emitters(tree, spec, targets, taps=taps, timings=emit_timings)
        timings["emit"] = time.monotonic() - start
        start = time.monotonic()
    if key is not None:
        timings["sign"] = time.monotonic() - start

    timings["export"] = timings["emit"] + timings.get("sign", 0.0)
    result = {
        "timings": timings,
        "emitters": {name.removeprefix("emit_"): seconds for name, seconds in emit_timings.items()},
        "artifacts": {str(a.format): {"size": a.size, "sha256": a.sha256} for a in artifacts},
        "rss_kib": {
            "after_imports": rss_before,
            "self_peak": _maxrss_kib(),
        },
    }
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


def _gnupghome() -> Path | None:
    home = os.environ.get("GNUPGHOME")
    return Path(home) if home else None


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
