"""The package's import graph has no circle, and the trainer does not reach up into evaluation.

Static: module-level and function-level ``import`` statements of every simwnw_hf module are read with
``ast`` (no module is executed), so a lazy import inside a function counts too.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simwnw_hf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """module -> set of simwnw_hf modules it imports (``from x import y`` counts ``x.y`` when it is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _ignoring_packages(graph: dict) -> dict:
    """Edges into a package ``__init__`` that only re-exports are the import of its parent package, which
    Python runs first anyway; keep module-to-module edges so that a real circle shows."""
    packages = {n for n in graph if (PACKAGE.parent / n.replace(".", "/") / "__init__.py").exists()}
    return {n: {t for t in targets if t not in packages} for n, targets in graph.items()}


def test_no_import_circle():
    cycle = find_cycle(_ignoring_packages(import_graph()))
    assert cycle is None, " -> ".join(cycle)


def test_trainer_does_not_import_evaluation():
    graph = import_graph()
    for module in ("simwnw_hf.train.trainer", "simwnw_hf.train.config", "simwnw_hf.train.summary"):
        assert not any(t.startswith("simwnw_hf.eval") for t in graph[module]), module
