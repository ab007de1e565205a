"""The size budget (issue #30): small modules with one job, functions a reader can hold at once.

Every .py file of the project (source and tests; benchmarks excepted: they are scripts that print a table)
stays under MAX_FILE_LINES lines, every function or method under MAX_FUNCTION_LINES. Read with ast.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
SKIP = {".venv", ".cache", ".device", "runs", "benchmarks", "build", ".git"}


def project_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.py") if not SKIP & set(p.relative_to(REPO).parts))


def oversized(paths: list[Path]) -> list[str]:
    """'path: N lines' and 'path:line name(): N lines' for everything over budget."""
    out = []
    for path in paths:
        text = path.read_text()
        rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        if (n := text.count("\n")) > MAX_FILE_LINES:
            out.append(f"{rel}: {n} lines (budget {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name}(): {length} lines (budget {MAX_FUNCTION_LINES})")
    return out


def test_no_file_or_function_over_budget():
    files = project_files()
    assert len(files) > 100 and any(p.parts[-2] == "tests" for p in files)  # it really reads the tree
    assert oversized(files) == []


def test_the_budget_check_sees_a_long_file_and_a_long_function(tmp_path):
    """Bug injection: a file one line over budget and a function one line over are both reported."""
    long_file = tmp_path / "long.py"
    long_file.write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    body = "".join(f"    y{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))  # def line + 80 = 81 lines
    long_function = tmp_path / "fn.py"
    long_function.write_text(f"def f():\n{body}")
    ok = tmp_path / "ok.py"
    ok.write_text("def g():\n" + "".join(f"    z{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1)))
    found = oversized([long_file, long_function, ok])
    assert len(found) == 2 and "long.py: 451 lines" in found[0] and "f(): 81 lines" in found[1]
