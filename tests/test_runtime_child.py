"""Every way a runtime child can go wrong becomes a FIDELITY_RUNTIME_FAILED finding, never an exception."""

from __future__ import annotations

import sys

import pytest

from quantgate.runtime.child import run_json_child


@pytest.mark.parametrize(
    ("code", "timeout", "expected"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", 30, "rt crashed with SIGSEGV running the pair"),
        ("import sys; print('boom', file=sys.stderr)", 30, "rt's child printed no result (boom)"),
        ("import time; time.sleep(30)", 0.5, "rt did not finish within 0.5 s"),
    ],
)
def test_child_failures_become_findings(code: str, timeout: float, expected: str) -> None:
    assert run_json_child([sys.executable, "-c", code], "rt", timeout) == {
        "finding": ("FIDELITY_RUNTIME_FAILED", expected)
    }


def test_child_document_passes_through() -> None:
    ok = 'print(\'{"outputs": {"cosine": 0.5}}\')'
    assert run_json_child([sys.executable, "-c", ok], "rt", 30) == {"outputs": {"cosine": 0.5}}
    said = 'print(\'{"finding": ["FIDELITY_OUTPUTS_UNAVAILABLE", "no inputs"]}\')'
    assert run_json_child([sys.executable, "-c", said], "rt", 30) == {
        "finding": ("FIDELITY_OUTPUTS_UNAVAILABLE", "no inputs")
    }
