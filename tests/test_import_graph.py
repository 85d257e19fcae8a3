"""No import cycle among quantgate's modules. The graph holds every import statement (module level and inside
functions, `if TYPE_CHECKING:` blocks left out): a function-level import that hides a cycle from Python is still
a cycle for the reader. Registries that name modules by string (formats.FORMATS and the registries derived from it)
are the plug-in points and are not edges."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level and inside functions (an import moved into a
    function to dodge a cycle still is one), but not under `if TYPE_CHECKING:` (never runs)."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
            else:
                pending.append(child)
    return found


def import_graph() -> dict[str, set[str]]:
    """quantgate module -> the quantgate modules its imports load (`from pkg import sub` is an edge
    to pkg.sub when sub is a module, else to pkg)."""
    files = {_module_name(p): p for p in (SRC / "quantgate").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan), each a set of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_findings_imports_no_reader_or_guard() -> None:
    assert import_graph()["quantgate.core.findings"] <= {"quantgate.core.bounds"}


def test_no_import_cycle() -> None:
    assert [sorted(c) for c in cycles(import_graph())] == []



# docs/architecture.md#the-layout: each package imports only its own tier and the tiers below
TIERS = {"core": 0, "formats": 1, "manifest": 2, "dequant": 2, "runtime": 2, "guards": 3, "gate": 4, "report": 5,
         "cli": 6, "__main__": 7}
# core.codes gathers every finding-code table for `make docs`: it reads the format registry for them
ALLOWED_UPWARD = {("quantgate.core.codes", "quantgate.formats")}


def test_imports_go_down_the_layers() -> None:
    def tier(module: str) -> int | None:
        parts = module.split(".")
        return TIERS.get(parts[1]) if len(parts) > 1 else None  # the package root: the version, the API

    upward = sorted(
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if tier(a) is not None and tier(b) is not None and tier(b) > tier(a) and (a, b) not in ALLOWED_UPWARD
    )
    assert upward == []
    assert set(TIERS) >= {p.name for p in (SRC / "quantgate").iterdir() if p.is_dir() and p.name != "__pycache__"
                          and p.name != "schemas"}
