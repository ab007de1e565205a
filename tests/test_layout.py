"""The import graph: dependencies point one way, the toy organism stays a fixture, no cycles.

Read with the standard library's ast module, so function-local imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Bottom to top; a package may import its own layer's package and any lower layer's.
LAYERS = {"records": 0, "lm": 1, "generation": 2, "steering": 2, "features": 2, "training": 2, "app": 3, "interop": 3}
TASKS = {"generation", "steering", "features", "training"}
FIXTURE = "organism"  # may import records and lm; only app (the CLI edge and the demo) imports it


def modules() -> dict[str, Path]:
    out = {}
    for package in [*LAYERS, FIXTURE]:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports (module-level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def test_dependencies_point_down_and_tasks_stay_apart():
    bad = []
    for mod, deps in graph().items():
        top = mod.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if other == top:
                continue
            if other == FIXTURE and top != "app":
                bad.append(f"{mod} imports the toy organism ({dep})")
            elif top == FIXTURE:
                if other not in ("records", "lm"):
                    bad.append(f"{mod} (fixture) imports {dep}")
            elif other in LAYERS and LAYERS[other] > LAYERS[top]:
                bad.append(f"{mod} imports {dep}, a higher layer")
            elif top in TASKS and other in TASKS:
                bad.append(f"{mod} imports another task package ({dep})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [node, dep]) if dep in stack
                              else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The graph test can fail: a planted upward import and a planted cycle are both found."""
    for package in ("records", "lm"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "records" / "y.py").write_text("def f():\n    from lm.x import g\n")
    (tmp_path / "lm" / "x.py").write_text("from records.y import f\n")
    for package in [*LAYERS, FIXTURE]:
        (tmp_path / package).mkdir(exist_ok=True)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    g = graph()
    assert g["records.y"] == {"lm.x"} and g["lm.x"] == {"records.y"}
    try:
        test_dependencies_point_down_and_tasks_stay_apart()
    except AssertionError as e:
        assert "records.y imports lm.x, a higher layer" in str(e)
    else:
        raise AssertionError("an upward import went unnoticed")
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "lm.x" in str(e) and "records.y" in str(e)
    else:
        raise AssertionError("a cycle went unnoticed")
