"""The import graph of constrained.*: every import counted, function-local ones included, no cycle, and no import
from a higher floor or from another part on the same floor (the floors of docs/design.md)."""

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "constrained"
DESIGN = ROOT / "docs" / "design.md"
# an upward import awaiting its move, with where it should go; the test fails when one is fixed and not struck off
PENDING: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    # constrained/kernels and constrained/proofs are links to the top-level folders: walked through them
    found = []
    for folder, subfolders, files in os.walk(PACKAGE, followlinks=True):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return {module_name(p): p for p in sorted(found)}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every constrained.* module that `path` imports anywhere in its body (resolved to a known module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule; any other name comes from pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "constrained":
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def floors(text: str) -> dict[str, int]:
    """part -> floor, from the fenced table under `### Floors` in docs/design.md."""
    block = re.search(r"^### Floors\n.*?^```text\n(.*?)^```", text, re.S | re.M)
    assert block, "docs/design.md has no ### Floors section with a ```text table"
    out = {}
    for line in block[1].splitlines():
        row = re.match(r"\s*(\d+)\s+(\w+(?:, \w+)*)", line)
        assert row, f"not a floor row: {line!r}"
        out.update({part: int(row[1]) for part in row[2].split(", ")})
    return out


def part(module: str) -> str:
    """The part a module belongs to: constrained.<part>[.rest]."""
    return module.split(".")[1]


def upward(edges: dict[str, set[str]], floor: dict[str, int]) -> set[tuple[str, str]]:
    """Imports into another part that is not on a lower floor."""
    return {(a, b) for a, targets in edges.items() if a != "constrained" for b in targets
            if part(a) != part(b) and floor[part(b)] >= floor[part(a)]}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_planted_cycle():
    edges = graph()
    assert "constrained.models.transformer" in edges and edges["constrained.measure.probes"]
    planted = {k: set(v) for k, v in edges.items()}
    planted["constrained.common.mask"].add("constrained.models.export")  # export imports mask
    assert any("constrained.common.mask" in c for c in cycles(planted))


def test_no_import_cycle_among_constrained_modules():
    assert cycles(graph()) == []


def test_every_part_has_a_floor_and_the_floors_are_ordered():
    floor = floors(DESIGN.read_text())
    parts = {part(m) for m in graph() if m != "constrained"}
    assert parts == set(floor), f"parts without a floor: {parts - set(floor)}; floors of no part: {set(floor) - parts}"
    assert floor["common"] == 0 and floor["kernels"] < floor["measure"] < floor["models"] < floor["proofs"]
    assert floor["models"] < floor["tasks"] < floor["experiments"] < floor["cli"]


def test_no_import_from_a_higher_floor_or_a_neighbour():
    found = upward(graph(), floors(DESIGN.read_text()))
    assert found - set(PENDING) == set(), sorted(found - set(PENDING))
    assert set(PENDING) - found == set(), f"fixed, strike off PENDING: {sorted(set(PENDING) - found)}"


def test_the_checker_finds_a_planted_upward_import_and_a_function_local_one(tmp_path):
    floor = floors(DESIGN.read_text())
    edges = {k: set(v) for k, v in graph().items()}
    edges["constrained.models.transformer"].add("constrained.tasks.task")  # models may not name a task
    edges["constrained.measure.probes"].add("constrained.models.lens")  # measure is below models
    assert {("constrained.models.transformer", "constrained.tasks.task"),
            ("constrained.measure.probes", "constrained.models.lens")} <= upward(edges, floor)
    local = tmp_path / "local.py"
    local.write_text("def f():\n    from constrained.cli import main\n    return main\n")
    assert imports(local, "constrained.kernels.local", set(modules())) == {"constrained.cli"}
