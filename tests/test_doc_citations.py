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
