"""Summaries of a py-spy ``--format raw`` profile: where the samples of each thread went.

A raw profile is one line per distinct stack, ``thread;outer frame;...;inner frame COUNT``,
each frame ``function (file:line)``. Here frames are merged per function (line numbers
dropped) and reported as a share of the thread's samples: self (the innermost frame) and
inclusive (anywhere in the stack, counted once per stack).

usage: profile_summary.py PROFILE.txt [--top N]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"]
    for marker in ("/dualbuild/", "/bench/", "/lib/python3"):
        if marker in file:
            file = file[file.index(marker) + 1 :]
            break
    return f"{match['function']} ({file})"


def summarize(path: Path, top: int = 12, rate: int = 200) -> dict[str, object]:
    """Per thread: seconds sampled, the top functions by self share, and dualbuild's own
    functions by inclusive seconds (where the time of each phase went, waiting included).
    """
    self_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    names: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        # "thread (0x7f..): emit_0" — the name is missing until the threading module knows it.
        tid, _, name = thread.partition(":")
        if name.strip():
            names[tid] = name.strip()
        if not frames:
            continue
        body = [_frame_name(frame) for frame in frames]
        totals[tid] += count
        self_counts[tid][body[-1]] += count
        for function in set(body):
            if "(dualbuild/" in function or "(bench/" in function:
                inclusive[tid][function] += count
    result: dict[str, object] = {}
    for tid, total in totals.most_common():
        label = f"{names.get(tid, tid)} [{tid}]"
        result[label] = {
            "seconds": round(total / rate, 2),
            "self": [(fn, round(100 * n / total, 1)) for fn, n in self_counts[tid].most_common(top)],
            "dualbuild_inclusive_s": [(fn, round(n / rate, 2)) for fn, n in inclusive[tid].most_common(40)],
        }
    return {"threads": result, "rate_hz": rate}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    json.dump(summarize(args.profile, args.top), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
