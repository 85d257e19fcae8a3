"""The README lists every guard and links the references; docs/finding-codes.md is generated from the code's tables."""

from __future__ import annotations

from tests.conftest import ROOT

from quantgate.core import codes
from quantgate.guards import guard_ids

README = (ROOT / "README.md").read_text(encoding="utf-8")
FINDING_CODES_DOC = (ROOT / "docs" / "finding-codes.md").read_text(encoding="utf-8")


def test_finding_codes_page_is_the_generated_one() -> None:
    """docs/finding-codes.md is written by `make docs` from the FINDING_CODES tables and nothing else."""
    assert codes.markdown() == FINDING_CODES_DOC, "docs/finding-codes.md is stale: run `make docs` and commit it"


def test_every_finding_code_is_documented() -> None:
    missing = [code for code in codes.all_finding_codes() if f"| `{code}` |" not in FINDING_CODES_DOC]
    assert missing == []


def test_readme_is_a_guide_not_the_reference() -> None:
    """The README is what a new user reads in ten minutes; the references live in docs/."""
    assert len(README.encode("utf-8")) <= 25 * 1024
    for doc in ("formats", "fidelity", "discovery", "policy", "manifest", "reports", "finding-codes", "runtime",
                "architecture"):
        assert f"(docs/{doc}.md)" in README and (ROOT / "docs" / f"{doc}.md").is_file()


def test_every_guard_is_documented() -> None:
    missing = [g for g in guard_ids() if f"| `{g}` |" not in README]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    assert "make validate" in README and "make test" in README
