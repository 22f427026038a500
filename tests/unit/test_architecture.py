"""The house rule, checked: each package imports only what lies below it (ARCHITECTURE.md).

Read from the code's own imports, so a change that runs an arrow back up, closes a circle or
hides an import inside a function fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGE = ROOT / "dualbuild"
# Bottom to top. A module may import its own room and the rooms of lower layers; rooms on one
# layer never import each other (the emitters never import the builder, nor it them).
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "log"),
    ("run", "files"),
    ("recipe", "layer", "gpg", "archive", "leftovers"),
    ("settings", "imageconfig", "scaffold"),
    ("plan",),
    ("builder", "emit", "sign"),
    ("report", "verify"),
    ("publish", "pipeline"),
    ("convert",),
    ("cli",),
    ("__main__",),
]
LAYER_OF = {room: number for number, rooms in enumerate(LAYERS) for room in rooms}
# The console script catches signals before the heavy imports: its one import inside a function.
LAZY_ALLOWED = {("cli.entry", "dualbuild.cli.main")}


MODULES = {
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path for path in sorted(PACKAGE.rglob("*.py"))
}


def room(module: str) -> str:
    return module.split(".")[0]


def imports(path: Path) -> list[tuple[str, bool]]:
    """The dualbuild modules a file imports (without the ``dualbuild.`` prefix), and whether at top level."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dualbuild":
            base = node.module.removeprefix("dualbuild").lstrip(".")
            # `from dualbuild.x import y` may name the module x.y or a name inside x.
            names = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            names = [name if name in MODULES else base for name in names]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("dualbuild.") for a in node.names if a.name.startswith("dualbuild.")]
        found += [(_face(name), id(node) in top) for name in names]
    return found


def _face(name: str) -> str:
    """A package imported as such is its ``__init__``."""
    return name if name in MODULES else f"{name}.__init__".lstrip(".")


def test_every_room_has_a_layer() -> None:
    assert {room(module) for module in MODULES} == set(LAYER_OF)


def test_no_import_runs_up_a_layer_or_across_one() -> None:
    wrong = []
    for module, path in MODULES.items():
        for target, _ in imports(path):
            here, there = room(module), room(target)
            if here != there and LAYER_OF[there] >= LAYER_OF[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_hides_inside_a_function() -> None:
    lazy = [
        (module, f"dualbuild.{target}")
        for module, path in MODULES.items()
        for target, at_top in imports(path)
        if not at_top
    ]
    assert set(lazy) <= LAZY_ALLOWED, lazy


def test_no_circle_between_modules() -> None:
    graph = {module: sorted({target for target, _ in imports(path)}) for module, path in MODULES.items()}
    circles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        for target in graph[module]:
            if target in trail:
                circles.append([*trail[trail.index(target) :], target])
            elif target not in done:
                visit(target, [*trail, target])
        done.add(module)

    for module in graph:
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_modules_stay_under_500_lines() -> None:
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}
