"""The README's two commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    return [command for command in commands if command]


def test_readme_starts_with_up_and_test():
    commands = readme_commands()
    assert commands[:2] == ["./stack up", "./stack test"]


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[-1] == f"exec {readme_commands()[1]}"
