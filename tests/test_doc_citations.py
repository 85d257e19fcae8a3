"""Comments cite documents in the repository: every `docs/<page>.md[#anchor]` named in the source, tests and
benchmarks exists (and so does the anchor, as GitHub slugs headings), and nothing cites the design or research
notes that never were in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([a-z0-9_-]+\.md)(?:#([a-z0-9_-]+))?")
OUTSIDE = re.compile(r"\bDESIGN §|\bresearch §|research [a-z-]+\.md")


def _sources() -> list[Path]:
    return [p for folder in ("src", "tests", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_slug_is_githubs() -> None:
    assert slug(" ExecuTorch `.pte` (`pte-program`)") == "executorch-pte-pte-program"
    assert slug(" Weight-bearing layers and nominal bits") == "weight-bearing-layers-and-nominal-bits"


def test_every_cited_doc_and_anchor_exists() -> None:
    broken = []
    for path in _sources():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            page, anchor = ROOT / "docs" / match.group(1), match.group(2)
            if not page.is_file() or (anchor and anchor not in anchors(page)):
                broken.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert broken == []


def test_nothing_cites_documents_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _sources()
        if path.name != "test_doc_citations.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert cited == []


def test_links_between_the_docs_resolve() -> None:
    """Relative links in README.md and docs/*.md (docs/finding-codes.md's come from quantgate.core.codes)."""
    link = re.compile(r"\]\(([^)#\s:]+\.md)?(?:#([^)\s]+))?\)")
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in link.finditer(page.read_text(encoding="utf-8")):
            target = (page.parent / match.group(1)).resolve() if match.group(1) else page
            anchor = match.group(2)
            if not target.is_file() or (anchor and anchor not in anchors(target)):
                broken.append(f"{page.relative_to(ROOT)}: {match.group(0)}")
    assert broken == []


MODULE_NAME = re.compile(
    r"`((?:quantgate\.)?(?:cli|core|dequant|formats|gate|guards|manifest|report|runtime)(?:\.[A-Za-z_]\w*)+)"
)
FILE_SUFFIXES = {"json", "md", "txt", "xml", "toml", "html", "sarif", "py"}  # `manifest.json` names a file


def _defined(path: Path) -> set[str]:
    """The names a module binds at its top level (defs, classes, assignments, imports)."""
    import ast

    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def module_name_resolves(name: str) -> bool:
    """`formats.pte.xnnpack.XNN_TOKENS`: the longest prefix is a module under src/quantgate, and the next
    part, if any, is a name that module binds (found statically: no import, so no optional dependency)."""
    parts = name.removeprefix("quantgate.").split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT / "src" / "quantgate" / Path(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            return cut == len(parts) or parts[cut] in _defined(module) or (base / f"{parts[cut]}.py").is_file()
    return False


def test_module_name_resolves() -> None:
    assert module_name_resolves("formats.pte.xnnpack.XNN_TOKENS")
    assert module_name_resolves("quantgate.formats.wire.binary.Budget.for_size")
    assert module_name_resolves("formats.pte")
    assert not module_name_resolves("formats.xnnpack.XNN_TOKENS")  # the module moved to formats.pte.xnnpack
    assert not module_name_resolves("formats.pte_layers")
    assert not module_name_resolves("formats.pte.xnnpack.XNN_TOKEN")


def test_every_module_named_in_backquotes_exists() -> None:
    """A docstring, comment or page naming `formats.xnnpack` after the module moved sends the reader nowhere."""
    pages = [*_sources(), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stale = [
        f"{path.relative_to(ROOT)}:{n}: {match.group(1)}"
        for path in pages
        if path.name != "test_doc_citations.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for match in MODULE_NAME.finditer(line)
        if match.group(1).rpartition(".")[2] not in FILE_SUFFIXES and not module_name_resolves(match.group(1))
    ]
    assert stale == []
