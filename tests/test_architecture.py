"""The package's layers, enforced: the book imports only downward, kernels only what they compute with.

babybitnet/ has four layers (the README's module table lists them):

- the book: one module per lesson concept (data, bigram, ..., finetune), plus ``files`` (every on-disk
  format) and ``runtime`` (devices, machines, processes);
- ``kernels/``: the C++ and Triton kernels, which import only ``quant``, ``packing`` and ``atomic`` (the
  tuning cache is written atomically);
- ``experiments/``: studies and benchmarks built on the book;
- ``course/``: lessons, grading and ``check``; and ``cli``, which may import anything.

Every import counts, also one inside a function: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "babybitnet"

KERNEL_DEPS = {"babybitnet.quant", "babybitnet.packing", "babybitnet.atomic"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The babybitnet modules that ``path`` imports (``from babybitnet import x`` counts x if x is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("babybitnet")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("babybitnet"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return {m for m in found if m in known}


def package_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, known) for p in files}
    for mod in graph:  # importing a package runs its __init__: babybitnet.course.x depends on babybitnet.course
        graph[mod].discard(mod)
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in ("kernels", "experiments", "course"):
        return parts[1]
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return "book"


ALLOWED = {  # which layers each layer may import
    "package": set(),
    "book": {"book", "kernels"},
    "kernels": {"kernels", "book"},  # of the book, only KERNEL_DEPS (below)
    "experiments": {"book", "kernels", "experiments"},
    "course": {"book", "kernels", "experiments", "course"},
    "cli": {"book", "kernels", "experiments", "course", "cli"},
}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every rule the import graph breaks, in words."""
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            src, dst = layer(mod), layer(dep)
            if dst not in ALLOWED[src] and dep != "babybitnet":
                problems.append(f"{mod} ({src}) must not import {dep} ({dst})")
            elif src == "kernels" and dst != "kernels" and dep not in KERNEL_DEPS:
                problems.append(f"{mod} (kernels) may import only {sorted(KERNEL_DEPS)}, not {dep}")
            elif mod == "babybitnet.runtime":
                problems.append(f"babybitnet.runtime is the bottom layer and must not import {dep}")
    return problems


def test_the_package_keeps_its_layers():
    graph = package_graph()
    assert "babybitnet.kernels.triton_gemv" in graph and "babybitnet.experiments.bench" in graph
    problems = violations(graph)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "edge, expected",
    [
        (("babybitnet.packed", "babybitnet.experiments.bench"), "babybitnet.packed (book) must not import"),
        (("babybitnet.kernels.triton_gemv", "babybitnet.bitlinear"), "may import only"),
        (("babybitnet.experiments.compare", "babybitnet.course.grading"), "must not import"),
        (("babybitnet.runtime", "babybitnet.data"), "bottom layer"),
    ],
)
def test_a_forbidden_import_is_caught(edge, expected):
    graph = {"babybitnet.packed": set(), "babybitnet.data": set(), "babybitnet.runtime": set()}
    src, dst = edge
    graph.setdefault(src, set()).add(dst)
    graph.setdefault(dst, set())
    assert any(expected in p for p in violations(graph)), violations(graph)


def test_a_cycle_is_caught():
    graph = {
        "babybitnet.gpt": {"babybitnet.attention"},
        "babybitnet.attention": {"babybitnet.train"},
        "babybitnet.train": {"babybitnet.gpt"},
        "babybitnet.data": set(),
    }
    assert violations(graph) == ["import cycle: babybitnet.attention -> babybitnet.gpt -> babybitnet.train"]
    graph["babybitnet.train"] = set()
    assert violations(graph) == []


def test_function_level_imports_count(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from babybitnet.experiments.bench import bench_train\n    return bench_train\n")
    assert imports_of(src, {"babybitnet.experiments.bench"}) == {"babybitnet.experiments.bench"}
