"""The package's import structure: entry points are leaves, and no two modules import each
other, directly or around a circle (every import counts, also one inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "peftflow"
ENTRY_POINTS = ("peftflow.stages", "peftflow.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """The peftflow modules `path` imports, anywhere in it (not under `if TYPE_CHECKING:`)."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("peftflow"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peftflow"):
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in found if m in MODULES} - {"peftflow"}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_module_outside_the_entry_points_imports_one() -> None:
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in GRAPH.items()
                   if not any(_inside(module, e) for e in ENTRY_POINTS)
                   for target in targets if any(_inside(target, e) for e in ENTRY_POINTS))
    assert wrong == []


# The rooms from the bottom up (docs/architecture.md, "Layers"): a module imports only from its
# own room or from one below it. The core is every module at the package top level.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("peftflow.store",),
    ("peftflow.dataset", "peftflow.train", "peftflow.evaluate", "peftflow.release"),
    ("peftflow.spec",),
    ("peftflow.run", "peftflow.track", "peftflow.notify"),
    ("peftflow.airflow",),
    ("peftflow.cli", "peftflow.stages", "peftflow.smoke"),
)


def _layer(module: str) -> int:
    for level, rooms in enumerate(LAYERS, start=1):
        if any(_inside(module, room) for room in rooms):
            return level
    assert module.count(".") <= 1, f"{module} is in no room of LAYERS: add its folder there"
    return 0


def test_every_import_points_to_the_same_room_or_one_below() -> None:
    upward = sorted(f"{module} imports {target}"
                    for module, targets in GRAPH.items()
                    for target in targets if _layer(target) > _layer(module))
    assert upward == []


def test_the_domain_packages_never_import_the_airflow_side() -> None:
    domain = ("peftflow.dataset", "peftflow.train", "peftflow.evaluate", "peftflow.release")
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in GRAPH.items()
                   if any(_inside(module, d) for d in domain)
                   for target in targets if _inside(target, "peftflow.airflow"))
    assert wrong == []


def test_there_are_no_import_cycles() -> None:
    """Depth-first search over the import graph; any back edge is a cycle, shown whole."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_the_package() -> None:
    """A walk that finds nothing would pass every test above."""
    assert len(MODULES) > 80
    assert "peftflow.run.stages" in GRAPH["peftflow.run.plan"]
    assert {_layer(m) for m in GRAPH} == set(range(len(LAYERS) + 1))
