"""One floor per layer: no module imports from a floor above its own, nor from another package on
its own floor (the design card's Layers). Reads imports with `ast`, so nothing is imported.

`python tests/test_layers.py` prints the package-level import graph."""

from __future__ import annotations

import ast
import collections
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Bottom floor first. A unit is a package or, where a module of a package sits lower than the
# package, that module: the feature schema lives in `transform` but every stage reads it.
FLOORS = (
    ("common", "transform.features"),  # the shared floor: schema, Beam plumbing, TFRecords, metrics, layout
    ("example_gen", "transform"),  # the stages that read raw data
    ("synth", "trainer", "serving"),  # the stages and tools built on those
    ("pipeline",),  # the DAG, its runners, Evaluator, Pusher, run record
    ("experiments",),
    ("mtrank", "bench"),  # the command line (the composition root) and the benchmarks
)
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}
TOP = {unit.split(".")[0] for unit in FLOOR}


def unit_of(module: str) -> str | None:
    """The longest unit that `module` is or lies in; None outside the project."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOOR:
            return ".".join(parts[:n])
    return None


def imported(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, at any depth (imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(package + ([base] if base else []))
            # `from transform import features` imports the module transform.features
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """{module: (source, is_package)} -> one line per import from a higher floor or a sideways package."""
    found = []
    for module, (source, is_package) in sorted(modules.items()):
        own = unit_of(module)
        for line, target in imported(module, source, is_package):
            theirs = unit_of(target)
            if theirs is None or theirs == own:
                continue
            if FLOOR[theirs] >= FLOOR[own]:
                where = "above" if FLOOR[theirs] > FLOOR[own] else "beside"
                found.append(f"{module}:{line} imports {target} ({theirs}, floor {FLOOR[theirs]}, {where} {own}'s)")
    return found


def project_modules() -> dict[str, tuple[str, bool]]:
    modules = {}
    for top in sorted(TOP):
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if any(part.startswith(".") for part in parts):
                continue  # caches such as bench/.data, where a bench may check out another revision
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = (path.read_text(), is_package)
    return modules


def test_every_package_has_a_floor():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= TOP, f"{sorted(packages - TOP)}: give them a floor in FLOORS"
    assert all((REPO / top).is_dir() for top in TOP)


def test_no_module_imports_from_a_floor_above_its_own():
    modules = project_modules()
    assert len(modules) > 50
    found = violations(modules)
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_check_names_the_module_and_the_import():
    modules = {
        "common.records": ("import json\n", False),
        "transform.features": ("from transform import preprocessing\n", False),
        "trainer.train": ("def f():\n    from pipeline.dag import StageError\n", False),
        "serving.score": ("from trainer import export\n", False),
        "pipeline.dag": ("from . import evaluator\nfrom trainer import train\nfrom transform import features\n", False),
        "mtrank": ("from .cli import main\n", True),
    }
    assert violations(modules) == [
        "serving.score:1 imports trainer.export (trainer, floor 2, beside serving's)",
        "trainer.train:2 imports pipeline.dag.StageError (pipeline, floor 3, above trainer's)",
        "transform.features:1 imports transform.preprocessing (transform, floor 1, above transform.features's)",
    ]


def graph() -> dict[str, set[str]]:
    edges = collections.defaultdict(set)
    for module, (source, is_package) in project_modules().items():
        for _, target in imported(module, source, is_package):
            theirs = unit_of(target)
            if theirs is not None and theirs != unit_of(module):
                edges[unit_of(module)].add(theirs)
    return edges


if __name__ == "__main__":
    edges = graph()
    for units in reversed(FLOORS):
        for unit in units:
            below = sorted(edges.get(unit, ()), key=lambda u: (-FLOOR[u], u))
            print(f"{FLOOR[unit]} {unit} -> {', '.join(below) or '(nothing)'}")
    sys.exit(bool(violations(project_modules())))
