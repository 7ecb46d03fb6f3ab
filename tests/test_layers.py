"""The layout's rules, read from the source with ast: imports run one way down the layers (no cycle between
modules or sub-packages, no import from a lower layer up to a higher one, function-level imports included), and
no two modules share a file name unless they are the same kind of thing."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model")

# From the top: a module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("commands", ("pipeline", "pipeline.download", "pipeline.tokenize", "pipeline.train", "pipeline.generate",
                  "pipeline.inspect", "pipeline.sweep", "pipeline.report", "pipeline.dashboard")),
    ("sweeps", ("pipeline.sweeps",)),
    ("analysis", ("pipeline.analysis",)),
    ("training", ("pipeline.training",)),
    ("interpret", ("pipeline.interpret",)),
    ("tracking", ("pipeline.tracking",)),
    ("data", ("pipeline.data",)),
    ("base", ("pipeline.settings", "pipeline.errors", "pipeline.files", "pipeline.memo", "pipeline.machine")),
    ("model", ("model",)),
]

# File names that say what kind of module a file is, not what it holds: every package has its own.
SHARED_NAMES = {"__init__", "__main__"}


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is named by its folder)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports, anywhere in its code (a function's imports count: they
    run as surely, only later). An import of a name from a package counts as one of its module when there is
    one of that name; a module's import of a package above it (its own __init__) does not count."""
    mods = modules(root, packages)
    graph = {name: set() for name in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, name, path)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _absolute(node: ast.ImportFrom, name: str, path: Path) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    package = parts if path.name == "__init__.py" else parts[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def unit(name: str) -> str:
    """The sub-package a module belongs to (pipeline.training.loop -> pipeline.training); a module at a package's
    top is a unit of its own."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for name, targets in graph.items():
        for target in targets:
            if unit(name) != unit(target) and "pipeline" not in (unit(name), unit(target)):
                units.setdefault(unit(name), set()).add(unit(target))
    return units


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, without recursion)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(name: str) -> int | None:
    """The layer's place from the top (0: commands), by the longest prefix that names it; None for none."""
    best = None
    for place, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (place, len(prefix))
    return best and best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) < layer_of(name):
                found.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return found


def shared_file_names(root: Path, package: str = "pipeline") -> list[str]:
    counts = Counter(path.stem for path in (root / package).rglob("*.py"))
    return sorted(stem for stem, count in counts.items() if count > 1 and stem not in SHARED_NAMES)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PROJECT_DIR)


def test_no_modules_import_each_other_in_a_cycle(graph):
    assert cycles(graph) == []


def test_no_sub_packages_import_each_other_in_a_cycle(graph):
    assert cycles(unit_graph(graph)) == []


def test_every_module_has_a_layer(graph):
    assert [name for name in graph if layer_of(name) is None] == []


def test_no_import_reaches_up_a_layer(graph):
    assert upward_imports(graph) == []


def test_no_two_modules_share_a_file_name():
    assert shared_file_names(PROJECT_DIR) == []


def test_the_checks_find_what_a_tangled_tree_breaks(tmp_path):
    files = {
        "pipeline/__init__.py": "",
        "pipeline/errors.py": "",
        "pipeline/sweeps/__init__.py": "",
        "pipeline/sweeps/runner.py": "from pipeline.sweeps.search import run_trials\n",
        "pipeline/sweeps/search.py": "def run_trials():\n    from .runner import run_child\n",
        "pipeline/sweeps/study.py": "from pipeline.errors import first_line\n",
        "pipeline/training/__init__.py": "",
        "pipeline/training/loop.py": "import pipeline.sweeps.study\n",
        "pipeline/training/runs.py": "",
        "pipeline/tracking/__init__.py": "",
        "pipeline/tracking/runs.py": "def load():\n    from pipeline import training\n",
        "model/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    tangled = import_graph(tmp_path)

    assert cycles(tangled) == [["pipeline.sweeps.runner", "pipeline.sweeps.search"]]
    assert cycles(unit_graph(tangled)) == []
    assert upward_imports(tangled) == [
        "pipeline.tracking.runs (tracking) imports pipeline.training (training)",
        "pipeline.training.loop (training) imports pipeline.sweeps.study (sweeps)",
    ]
    (tmp_path / "pipeline/sweeps/study.py").write_text("from pipeline.training import loop\n")
    assert cycles(unit_graph(import_graph(tmp_path))) == [["pipeline.sweeps", "pipeline.training"]]
    assert shared_file_names(tmp_path) == ["runs"]
