"""Policy errors are usage errors (exit 4) that name the key and its line, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import run_cli

from quantgate.gate import UsageError
from quantgate.gate.policy import PolicyError, find_policy, key_lines, load_policy


def _policy(tmp: Path, text: str, name: str = "quantgate.toml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(tmp: Path, text: str, name: str = "quantgate.toml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(str(_policy(tmp, text, name)))
    return info.value.problems


GOOD = """\
[quantgate]
version = 1
paths = ["dist/"]
fail_on = "warn"
coverage_basis = "params"

[guards.integrity]
required = true

[guards.size-heuristic]
require = ["bits_per_weight <= 9"]
warn = ["estimated_quantized_share >= 0.9"]
params = { quant_bits = 4 }

[[waivers]]
guard = "size-heuristic"
artifact = "dist/a.gguf"
sha256 = "%s"
reason = "by design"
expires = 2027-01-31
""" % ("ab" * 32)


def test_good_policy_loads(tmp_path: Path) -> None:
    policy = load_policy(str(_policy(tmp_path, GOOD)))
    assert policy.fail_on == "warn" and policy.coverage_basis == "params" and policy.paths == ["dist/"]
    config = policy.guard_config("size-heuristic")
    assert [str(b) for b in config.require] == ["bits_per_weight <= 9"]
    assert [(b.level, str(b)) for b in config.warn] == [("warn", "estimated_quantized_share >= 0.9")]
    assert config.params["quant_bits"] == 4 and config.basis == "params"
    assert policy.waivers[0].expires.isoformat() == "2027-01-31"
    assert policy.guard("integrity").required is True
    assert len(policy.sha256) == 64


def test_unknown_key_in_guard_names_key_and_line(tmp_path: Path) -> None:
    text = GOOD.replace('require = ["bits_per_weight <= 9"]', 'requir = ["bits_per_weight <= 9"]')
    problems = _problems(tmp_path, text)
    assert problems == ["unknown key guards.size-heuristic.requir (line 11); did you mean require?"]


def test_unknown_top_level_and_settings_keys(tmp_path: Path) -> None:
    text = GOOD.replace('fail_on = "warn"', 'fail_on = "warn"\nfailon = 1') + "\n[reports]\nx = 1\n"
    problems = _problems(tmp_path, text)
    assert "unknown key reports (line 23)" in problems
    text = GOOD.replace('fail_on = "warn"', 'fail_on = "warn"\nfail_onn = 1')
    assert _problems(tmp_path, text) == ["unknown key quantgate.fail_onn (line 5); did you mean fail_on?"]


def test_malformed_bound(tmp_path: Path) -> None:
    text = GOOD.replace(
        'warn = ["estimated_quantized_share >= 0.9"]',
        'warn = [\n  "estimated_quantized_share >= 0.9",\n  "coverage.ops.int8 => 0.9",\n]',
    )
    problems = _problems(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith("guards.size-heuristic.warn[1] (line 14): malformed bound 'coverage.ops.int8 => 0.9'")


def test_unknown_guard(tmp_path: Path) -> None:
    text = GOOD + '\n[guards.gguf-dtype]\nrequire = ["coverage.ops.int8 >= 0.9"]\n'
    problems = _problems(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith("unknown guard guards.gguf-dtype (line 22);")


def test_unknown_guard_message_is_one_for_policy_run_and_guard(tmp_path: Path) -> None:
    """A policy key, `run --guards` and `guard ID` word an unknown id by one rule: the closest known id
    (a policy problem names it alone), then every known id."""
    from quantgate.gate.session import known_guard
    from quantgate.gate.verdict import selected_guards
    from quantgate.guards import guard_ids, unknown_guard_message

    known = "known guards: " + ", ".join(guard_ids())
    assert unknown_guard_message(["integrty", "zzz", "gguf-dtype"]) == (
        f"unknown guard(s): integrty, zzz, gguf-dtype; did you mean integrity, gguf-dtypes? {known}"
    )
    assert unknown_guard_message(["zzz"], "'zzz'") == f"unknown guard 'zzz'; {known}"
    assert unknown_guard_message(["integrty"], "guards.integrty", brief=True) == (
        "unknown guard guards.integrty; did you mean integrity?"
    )
    assert unknown_guard_message(["zzz"], "guards.zzz", brief=True) == f"unknown guard guards.zzz; {known}"
    for typo, hint in (("integrty", "did you mean integrity? "), ("zzz", "")):
        with pytest.raises(UsageError) as run:
            selected_guards(["integrity", typo])
        assert str(run.value) == f"unknown guard(s): {typo}; {hint}{known}"
        with pytest.raises(UsageError) as one:
            known_guard(typo)
        assert str(one.value) == f"unknown guard '{typo}'; {hint}{known}"
        line = GOOD.count("\n") + 2
        problems = _problems(tmp_path, GOOD + f"\n[guards.{typo}]\nrequired = true\n")
        assert problems == [f"unknown guard guards.{typo} (line {line}); {hint.strip() or known}"]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    text = (
        GOOD.replace('fail_on = "warn"', 'fail_on = "sometimes"')
        .replace("required = true", "required = true\nrequierd = false")
        .replace('sha256 = "' + "ab" * 32, 'sha256 = "xyz')
    )
    problems = _problems(tmp_path, text)
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "quantgate.fail_on (line 4): 'sometimes' is not one of ['fail', 'warn']" in joined
    assert "unknown key guards.integrity.requierd (line 9)" in joined
    assert "waivers[0].sha256 (line 19)" in joined


def test_waiver_missing_fields_and_required_disabled(tmp_path: Path) -> None:
    text = GOOD.replace('reason = "by design"\n', "").replace("required = true", "required = true\nenabled = false")
    problems = _problems(tmp_path, text)
    assert any("waivers[0] (line 16): 'reason' is a required property" in p for p in problems)
    assert any(p == "guards.integrity (line 7): a guard cannot be both required and disabled" for p in problems)


def test_invalid_toml(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "[quantgate\nversion = 1\n")
    assert problems[0].startswith("not valid TOML:") and "line 1" in problems[0]


def test_pyproject_tool_quantgate(tmp_path: Path) -> None:
    text = """\
[project]
name = "x"

[tool.quantgate]
version = 1
fail_on = "warn"

[tool.quantgate.guards.size-heuristic]
require = ["bits_per_weight <= 5"]
enabled = "yes"
"""
    path = _policy(tmp_path, text, "pyproject.toml")
    assert find_policy(None, tmp_path) == str(path)
    problems = _problems(tmp_path, text, "pyproject.toml")
    assert problems == ["tool.quantgate.guards.size-heuristic.enabled (line 10): 'yes' is not of type 'boolean'"]
    policy = load_policy(str(_policy(tmp_path, text.replace('enabled = "yes"\n', ""), "pyproject.toml")))
    assert policy.fail_on == "warn"
    assert [str(b) for b in policy.guard_config("size-heuristic").require] == ["bits_per_weight <= 5"]


def test_quantgate_toml_wins_over_pyproject(tmp_path: Path) -> None:
    _policy(tmp_path, "[tool.quantgate]\nversion = 1\n", "pyproject.toml")
    toml = _policy(tmp_path, "[quantgate]\nversion = 1\n")
    assert find_policy(None, tmp_path) == str(toml)


def test_key_lines_handles_quoted_and_array_tables() -> None:
    lines = key_lines('[quantgate]\nversion = 1\n[[waivers]]\nguard = "a"\n[[waivers]]\n"guard" = "b"\n')
    assert lines[("quantgate", "version")] == 2
    assert lines[("waivers", "0", "guard")] == 4
    assert lines[("waivers", "1", "guard")] == 6


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            lambda t: t.replace("required = true", "requird = true"),
            "unknown key guards.integrity.requird (line 8)",
        ),
        (
            lambda t: t.replace("bits_per_weight <= 9", "bits_per_weight <=> 9"),
            "guards.size-heuristic.require[0]",
        ),
        (lambda t: t + "\n[guards.nope]\n", "unknown guard guards.nope"),
    ],
)
def test_cli_policy_errors_exit_4(tmp_path: Path, edit, needle: str) -> None:
    policy = _policy(tmp_path, edit(GOOD))
    (tmp_path / "dist").mkdir()
    proc = run_cli("run", "--policy", str(policy), str(tmp_path / "dist"), cwd=tmp_path)
    assert proc.returncode == 4
    assert needle in proc.stderr
    assert proc.stdout == ""
