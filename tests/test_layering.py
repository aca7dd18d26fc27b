"""The house rule "no import circles": midre's top-level modules and subpackages form a DAG, counting
function-level (lazy) imports too, which only hide a cycle from the interpreter."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "midre"


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("").parts
        is_pkg = rel[-1] == "__init__"
        module = ".".join(rel[:-1] if is_pkg else rel)
        package = module if is_pkg else ".".join(rel[:-1])
        src = _component(module)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module] if node.module else []
            for t in names:
                if t.startswith("midre.") and _component(t) != src:
                    edges.setdefault(src, set()).add(_component(t))
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return []

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) == []


def test_midre_has_no_import_cycle():
    edges = import_graph()
    assert {"pipeline", "report", "training", "checkpoint"} <= set(edges)   # the graph was really read
    assert find_cycle(edges) == [], "import cycle between midre's modules: " + " -> ".join(find_cycle(edges))


# ------------------------------------------------------------------ "functions short enough to read"
MAX_FUNCTION_LINES = 70      # code lines of one function or method, its docstring not counted


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[tuple[int, str]]:
    found = []
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                n -= first.end_lineno - first.lineno + 1
            if n > limit:
                found.append((n, f"{f.relative_to(PKG.parent)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def test_the_length_checker_counts_code_not_docstrings():
    assert long_functions(limit=5)                        # the package really was read
    assert all(n > 5 for n, _ in long_functions(limit=5))


def test_no_function_is_longer_than_a_screen():
    assert long_functions() == [], f"functions over {MAX_FUNCTION_LINES} code lines; split them: {long_functions()}"
