"""Every way a runtime child can go wrong becomes a finding, never an exception; and one helper
(`quantgate.runtime.child`) starts, limits and reads every runtime child, so pte-inspector and fidelity's
output runs meet the same limits with the same finding codes."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, run_json
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


# --- one helper for every runtime child ------------------------------------------------------------------

SRC = Path(__file__).resolve().parent.parent / "src"
PTE = FIXTURES / "pte"
ONNX = FIXTURES / "onnx"
HAVE_PTE_RUNTIME = all(importlib.util.find_spec(m) is not None for m in ("executorch", "torch"))
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc (the memory watchdog)")


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from module import name` and every `alias.name` on an imported
    quantgate module, at any depth of the file (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""  # quantgate imports absolutely
            for alias in node.names:
                out.append((module, alias.name))
                aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, ""))
                bound = alias.name if alias.asname else alias.name.split(".")[0]
                aliases[alias.asname or bound] = bound
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if module.startswith("quantgate."):
                out.append((module, node.attr))
    return out


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (SRC / "quantgate" / folder).glob("*.py"))


def test_no_private_helper_crosses_a_module_and_runtime_never_imports_a_guard() -> None:
    everything = sorted((SRC / "quantgate").rglob("*.py"))
    private_from_guards = [
        (str(p.relative_to(SRC)), module, name) for p in everything for module, name in _imports(p)
        if module.startswith("quantgate.guards") and name.startswith("_") and not name.startswith("__")
        and module != ".".join(p.relative_to(SRC).with_suffix("").parts)
    ]
    assert private_from_guards == []
    # the runtime side (the children and their helper) reaches no other module's private names
    runtime_side = [*_modules("runtime"), SRC / "quantgate" / "dequant" / "outputs.py"]
    private = [
        (str(p.relative_to(SRC)), module, name) for p in runtime_side for module, name in _imports(p)
        if module.startswith("quantgate.") and name.startswith("_") and not name.startswith("__")
        and module != ".".join(p.relative_to(SRC).with_suffix("").parts)
    ]
    assert private == []
    guards = [(str(p.relative_to(SRC)), module) for p in runtime_side for module, _ in _imports(p)
              if module.startswith("quantgate.guards")]
    assert guards == []
    # fidelity's output runs take their time limit from the runtime helper, not from another guard
    assert [m for m, _ in _imports(SRC / "quantgate" / "guards" / "fidelity.py")
            if m.startswith("quantgate.guards.") and m != "quantgate.guards.base"] == []


# QUANTGATE_RUNNER_FAULT=KIND:NAME makes the one serving loop fail on the request naming NAME, whichever
# runtime child serves it: the same box then kills it, and each guard names the same failure
RUNS = [
    pytest.param("pte-inspector", PTE / "int8_xnnpack.pte", (), "the ExecuTorch runtime", 1024,
                 marks=pytest.mark.skipif(not HAVE_PTE_RUNTIME, reason="executorch/torch not installed"),
                 id="pte-inspector"),
    pytest.param("fidelity", PTE / "int8_xnnpack.pte", ("reference=" + str(PTE / "fp32_xnnpack.pte"),),
                 "the ExecuTorch runtime", 1024,
                 marks=pytest.mark.skipif(not HAVE_PTE_RUNTIME, reason="executorch/torch not installed"),
                 id="fidelity-pte"),
    pytest.param("fidelity", ONNX / "static_qdq.onnx", ("reference=" + str(ONNX / "float.onnx"),), "onnxruntime", 512,
                 marks=pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed"), id="fidelity-onnx"),
]


def _guard(guard: str, artifact: Path, params: tuple[str, ...], fault: str, *more: str) -> tuple[int, dict]:
    args = ["guard", guard, str(artifact)]
    for param in (*params, *(("weights=false",) if guard == "fidelity" else ()), *more):
        args += ["--param", param]
    return run_json(*args, env={"QUANTGATE_RUNNER_FAULT": f"{fault}:{artifact.name}"}, timeout=240)


@linux_only
@pytest.mark.parametrize(("guard", "artifact", "params", "runtime", "limit"), RUNS)
def test_the_memory_limit_is_one_for_every_runtime_child(guard: str, artifact: Path, params: tuple[str, ...],
                                                          runtime: str, limit: int) -> None:
    code, result = _guard(guard, artifact, params, "memory", f"max_rss_mb={limit}")
    assert (code, result["status"]) == (1, "FAIL"), result
    assert [f["code"] for f in result["findings"]] == ["RUNTIME_MEMORY_LIMIT"]
    assert result["findings"][0]["message"].startswith(
        f"{runtime} needed more than the {limit} MiB memory limit and was killed")


@pytest.mark.parametrize(("guard", "artifact", "params", "runtime", "limit"), RUNS)
@pytest.mark.parametrize("fault", ["segv", "hang"])
def test_a_crash_or_a_hang_is_one_for_every_runtime_child(guard: str, artifact: Path, params: tuple[str, ...],
                                                           runtime: str, limit: int, fault: str) -> None:
    # the time limit counts the runner's start-up too; a start-up slower than 15 s would end the same way
    code, result = _guard(guard, artifact, params, fault, "timeout=15" if fault == "hang" else "timeout=120")
    if guard == "pte-inspector":
        assert (code, result["status"]) == (2, "ERROR"), result
        assert result["error"]["type"] == {"segv": "runtime_crash", "hang": "timeout"}[fault]
        message = result["error"]["message"]
    else:
        assert (code, result["status"]) == (1, "FAIL"), result
        assert [f["code"] for f in result["findings"]] == ["FIDELITY_RUNTIME_FAILED"]
        message = result["findings"][0]["message"]
    expected = {"segv": f"{runtime} crashed with SIGSEGV ", "hang": f"{runtime} did not finish within 15 s"}[fault]
    assert message.startswith(expected), message
