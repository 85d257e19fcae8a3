"""The README lists every stable finding code and every guard."""

from __future__ import annotations

from tests.conftest import ROOT

from quantgate.findings import all_finding_codes
from quantgate.validators import guard_ids

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_finding_code_is_documented() -> None:
    missing = [code for code in all_finding_codes() if f"`{code}`" not in README]
    assert missing == []


def test_every_guard_is_documented() -> None:
    missing = [g for g in guard_ids() if f"| `{g}` |" not in README]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    assert "make validate" in README and "make test" in README
