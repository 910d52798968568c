"""The package's shape: modules one can read in a sitting, and imports that form no cycle.

Both checks read the source with :mod:`ast` (nothing is imported), so they hold for every
module, those of optional frameworks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pinbackend"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
#: Benchmark code is a tool of its own and is left out of the size rules (issue 19).
SIZE_EXEMPT = ("bench",)

# Issue 19 is splitting the large modules and removing the cycles part by part; the lead makes
# these strict once every part has landed.


def module_name(path: Path) -> str:
    """``pinbackend/host/leases.py`` -> ``pinbackend.host.leases`` (a package's is its own)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere: at module level, in a function,
    under ``if TYPE_CHECKING``: every ``import``/``from`` statement counts."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # ``import pinbackend.host.leases`` also runs ``pinbackend.host``'s own code.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> list[str] | None:
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.get(module, ())):
            if other in on_stack:
                return [*stack[stack.index(other) :], other]
            if other not in done:
                cycle = visit(other)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    """Each module's imports of the package's other modules (a package is its ``__init__``).

    The import of a submodule runs its package's ``__init__`` first, and that is no edge:
    every package's ``__init__`` imports its submodules, so such edges would make every
    package a cycle. An explicit import of a name from a package's ``__init__`` is one.
    """
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def test_find_cycle_finds_a_cycle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_the_modules():
    graph = import_graph()
    assert "pinbackend.runner._workers" in graph, "the graph lists the package's modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in package_modules().items():
        if name.split(".")[1:2] == list(SIZE_EXEMPT):
            continue
        tree = parse(path)
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - start + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}(): "
                        f"{length} lines"
                    )
    assert not too_long, (
        f"over {MAX_MODULE_LINES} lines per module or {MAX_FUNCTION_LINES} per function:\n"
        + "\n".join(too_long)
    )
