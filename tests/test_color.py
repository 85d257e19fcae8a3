"""`--color auto|always|never`: the text report's status words and verdict painted on a terminal, and
never anything else: no colour in json/sarif/markdown/junit/github output or in --output files, and
no escape sequence from an artifact's own strings (colour is applied after they are made inert)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from tests.conftest import run_cli

from quantgate.report.text import use_color

REPO = Path(__file__).resolve().parents[1]
GGUF = REPO / "fixtures" / "release" / "tiny-llama-q8_0.gguf"
NEUTRAL = {"NO_COLOR": "", "FORCE_COLOR": "", "TERM": "xterm"}
OURS = re.compile(r"\x1b\[(?:32|1;31|1;35|33|2|0)m")


def _stable(text: str) -> str:
    """The report without its cost line (wall times differ between two runs)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("cost: "))


def _release(tmp_path: Path, name: str = "a.gguf") -> Path:
    shutil.copy(GGUF, tmp_path / name)
    (tmp_path / "quantgate.toml").write_text("[quantgate]\nversion = 1\n", encoding="utf-8")
    return tmp_path


def test_always_paints_status_and_verdict_and_never_does_not(tmp_path: Path) -> None:
    _release(tmp_path)
    painted = run_cli("--color", "always", "run", "a.gguf", cwd=tmp_path, env=NEUTRAL)
    after = run_cli("run", "a.gguf", "--color=always", cwd=tmp_path, env=NEUTRAL)  # after the subcommand
    after_split = run_cli("run", "a.gguf", "--color", "always", "-q", cwd=tmp_path, env=NEUTRAL)
    bare = run_cli("run", "a.gguf", "--color", "never", cwd=tmp_path, env={**NEUTRAL, "FORCE_COLOR": "1"})
    assert painted.returncode == after.returncode == after_split.returncode == bare.returncode == 0, painted.stderr
    assert _stable(painted.stdout) == _stable(after.stdout) == _stable(after_split.stdout)
    assert "\x1b" not in bare.stdout
    assert _stable(OURS.sub("", painted.stdout)) == _stable(bare.stdout)  # colour changes nothing else
    assert "\x1b[32mPASS\x1b[0m " in painted.stdout
    last = painted.stdout.splitlines()[-1]
    assert last.startswith("\x1b[32mquantgate: PASS") and last.endswith("exit 0\x1b[0m")
    assert "\x1b" not in painted.stderr


def test_auto_follows_the_terminal_no_color_and_force_color(tmp_path: Path) -> None:
    _release(tmp_path)
    piped = run_cli("run", "a.gguf", cwd=tmp_path, env=NEUTRAL)  # stdout is a pipe: no colour
    forced = run_cli("run", "a.gguf", cwd=tmp_path, env={**NEUTRAL, "FORCE_COLOR": "1"})
    both = run_cli("run", "a.gguf", cwd=tmp_path, env={"NO_COLOR": "1", "FORCE_COLOR": "1", "TERM": "xterm"})
    assert piped.returncode == forced.returncode == both.returncode == 0
    assert "\x1b" not in piped.stdout and "\x1b" not in both.stdout
    assert "\x1b[32mPASS\x1b[0m" in forced.stdout


class _Tty:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("mode", "env", "tty", "expected"),
    [
        ("auto", {}, True, True),
        ("auto", {}, False, False),
        ("auto", {"NO_COLOR": "1"}, True, False),
        ("auto", {"NO_COLOR": ""}, True, True),  # only a non-empty NO_COLOR counts
        ("auto", {"TERM": "dumb"}, True, False),
        ("auto", {"FORCE_COLOR": "1"}, False, True),
        ("auto", {"FORCE_COLOR": "1", "NO_COLOR": "x"}, False, False),
        ("always", {"NO_COLOR": "1"}, False, True),  # the explicit flag wins
        ("never", {"FORCE_COLOR": "1"}, True, False),
    ],
)
def test_use_color(mode: str, env: dict[str, str], tty: bool, expected: bool) -> None:
    assert use_color(mode, _Tty(tty), env) is expected


def test_no_colour_in_machine_formats_or_output_files(tmp_path: Path) -> None:
    _release(tmp_path)
    for fmt in ("json", "sarif", "markdown", "junit", "github"):
        proc = run_cli("run", "a.gguf", "--format", fmt, "--color", "always", "--no-github", cwd=tmp_path, env=NEUTRAL)
        assert proc.returncode == 0, (fmt, proc.stderr)
        assert "\x1b" not in proc.stdout, fmt
    proc = run_cli(
        "run", "a.gguf", "--color", "always", "--output", "text=r.txt", "--output", "markdown=r.md",
        cwd=tmp_path, env=NEUTRAL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[32m" in proc.stdout
    assert "\x1b" not in (tmp_path / "r.txt").read_text("utf-8")
    assert "\x1b" not in (tmp_path / "r.md").read_text("utf-8")


def test_an_artifact_name_cannot_carry_its_own_escapes(tmp_path: Path) -> None:
    # a file named with SGR, cursor and OSC sequences: shown escaped (`\x1b`), and every raw ESC in the
    # painted report is one of ours
    name = "m\x1b[31mRED\x1b[2J\x1b]0;title\x07\x1b[0m.gguf"
    _release(tmp_path, name)
    proc = run_cli("--color", "always", "run", name, cwd=tmp_path, env=NEUTRAL)
    assert proc.returncode == 0, proc.stderr
    assert "\\x1b[31mRED" in proc.stdout  # the name, made inert
    assert proc.stdout.count("\x1b") == len(OURS.findall(proc.stdout)) > 0
    assert "\x07" not in proc.stdout


def test_the_color_flag_takes_the_text_reports_modes(tmp_path: Path) -> None:
    """`--color` offers report.text.COLOR_MODES itself (the modes `use_color` knows), not a copy."""
    import argparse

    from quantgate.cli import main as cli
    from quantgate.report.text import COLOR_MODES

    color = next(a for a in cli._parser()._actions if "--color" in a.option_strings)
    assert isinstance(color, argparse.Action) and color.choices is COLOR_MODES
    proc = run_cli("--color", "sometimes", "run", ".", cwd=tmp_path)
    assert proc.returncode == 4
    assert "invalid choice: 'sometimes'" in proc.stderr  # argparse quotes the choices or not, by version
    assert all(mode in proc.stderr.rpartition("choose from")[2] for mode in ("auto", "always", "never"))
