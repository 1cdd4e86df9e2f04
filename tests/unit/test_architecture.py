"""The import contract: packages depend one way, down the layers of docs/design.md, and no module
imports another that (directly or not) imports it back.

Every import statement of every module under src/ckptlab counts, including those inside functions
and under TYPE_CHECKING: the code imports heavy modules lazily, so a check of module-level imports
alone would miss most of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Top to bottom; a module may import its own layer and the layers below it. Packages on one line are
# siblings that must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli", "api"),
    ("commands",),
    ("reporting",),
    ("sweeps",),
    ("train", "evaluation"),
    ("data",),
    ("tasks",),
    ("models",),
    ("runs", "synthetic"),
    ("config",),
    ("files", "faults"),
    ("errors",),
]


def modules(src: Path = SRC) -> dict[str, Path]:
    found = {}
    for path in (src / "ckptlab").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the ckptlab modules it imports (`from pkg import submodule` counts as the submodule)."""
    known = modules(src)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in known else base)
            for target in targets:
                while target and target not in known:  # `import ckptlab.a.b` where only ckptlab.a is ours
                    target = target.rpartition(".")[0]
                if target.startswith("ckptlab") and target != name:
                    graph[name].add(target)
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the root package (`ckptlab.__version__`) belongs to no layer
    for depth, siblings in enumerate(LAYERS):
        if parts[1] in siblings:
            return depth
    return -1


def test_every_package_has_a_layer() -> None:
    unplaced = sorted({m.split(".")[1] for m in modules() if layer_of(m) == -1})
    assert not unplaced, f"packages without a layer in LAYERS (and docs/design.md): {unplaced}"


def against_layers(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = layer_of(module), layer_of(target)
            if mine is None or theirs is None:
                continue
            sibling = mine == theirs and module.split(".")[1] != target.split(".")[1]
            if theirs < mine or sibling:
                upward.append(f"{module} -> {target}")
    return upward


def test_imports_only_go_down_the_layers() -> None:
    upward = against_layers(import_graph())
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph has a few hundred nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [{"a", "b"}]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[set[str]]) -> None:
    assert [c for c in strongly_connected(graph) if len(c) > 1] == expected


def test_the_checks_see_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    files = {
        "ckptlab/__init__.py": "",
        "ckptlab/errors.py": "",
        "ckptlab/data/__init__.py": "",
        "ckptlab/data/a.py": "def f():\n    from ckptlab.commands import b\n",
        "ckptlab/data/c.py": "from . import a\n",
        "ckptlab/commands/__init__.py": "",
        "ckptlab/commands/b.py": "import ckptlab.data.c\nfrom ckptlab.errors import X\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["ckptlab.commands.b"] == {"ckptlab.data.c", "ckptlab.errors"}
    assert against_layers(graph) == ["ckptlab.data.a -> ckptlab.commands.b"]
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [
        {"ckptlab.data.a", "ckptlab.commands.b", "ckptlab.data.c"}
    ]


def test_every_package_is_a_regular_package() -> None:
    # setuptools' package discovery skips folders without __init__.py: a wheel would miss them.
    folders = {path.parent for path in (SRC / "ckptlab").rglob("*.py")}
    missing = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders of modules without __init__.py: {missing}"
