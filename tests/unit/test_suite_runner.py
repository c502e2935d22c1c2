"""The suite runner (tests/run.py): a hung stage is cut off, reports where it
stood, and leaves the rest of the run its time; steps run side by side really
run at once and print their output whole."""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from tests import run

HUNG_TEST = """
import time

def test_quick():
    pass

def test_hangs():
    time.sleep(600)
"""


def test_a_command_past_its_limit_is_cut_off_promptly():
    started = time.monotonic()
    code, cut_off = run.run_limited([sys.executable, "-c", "import time; time.sleep(600)"], run.ROOT, 1)
    assert cut_off
    assert code != 0
    assert time.monotonic() - started < 30


def test_a_command_within_its_limit_keeps_its_exit_code():
    assert run.run_limited([sys.executable, "-c", "raise SystemExit(3)"], run.ROOT, 60) == (3, False)
    assert run.run_limited([sys.executable, "-c", "pass"], run.ROOT, None) == (0, False)


def test_steps_side_by_side_run_at_once_and_print_each_ones_output_whole(tmp_path, capfd):
    # Each waits for a file only the other writes (one after the other, the first would be cut
    # off), so their lines alternate in time: waiter 0, writer 0 to 2, waiter 1 and 2.
    started, done = tmp_path / "started", tmp_path / "done"

    def program(*lines: str) -> list[str]:
        return [sys.executable, "-c", "\n".join(["import pathlib, sys, time", *lines])]

    def wait_for(flag: Path) -> str:
        return f"while not pathlib.Path({str(flag)!r}).exists(): time.sleep(0.05)"

    def write(flag: Path) -> str:
        return f"pathlib.Path({str(flag)!r}).write_text('x')"

    def say(name: str, *numbers: int) -> str:
        return "; ".join(f"print({name!r}, {i}, flush=True)" for i in numbers)

    waits = program(say("waiter", 0), write(started), wait_for(done), say("waiter", 1, 2), "sys.exit(0)")
    writes = program(wait_for(started), say("writer", 0, 1, 2), write(done), "sys.exit(1)")

    results = run.side_by_side(
        lambda: run.step("waiter", waits, limit=30, buffered=True),
        lambda: run.step("writer", writes, limit=30, buffered=True),
    )

    assert results == [True, False]
    out = capfd.readouterr().out
    for name in ("waiter", "writer"):
        # Each step's lines together, under its own heading, then its outcome.
        block = f"=== {name}: output\n{name} 0\n{name} 1\n{name} 2\n=== {name}: "
        assert block in out, out
    assert "=== writer: FAILED in" in out
    assert "=== waiter: ok in" in out


def test_a_hung_pytest_stage_fails_with_its_report_and_its_stacks(tmp_path, monkeypatch, capfd):
    (tmp_path / "test_hung.py").write_text(HUNG_TEST)
    monkeypatch.setattr(run, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(run, "STAGE_LIMITS", {"hung": 8})
    monkeypatch.setattr(run, "FAULTHANDLER_SECONDS", {"hung": 2})
    run.REPORTS.mkdir()

    assert not run.pytest("hung", ["-q", "-p", "no:cacheprovider", "test_hung.py"], cwd=tmp_path)

    printed = capfd.readouterr()
    assert "=== hung: FAILED: cut off after its 8 s limit" in printed.out
    # The faulthandler dump and pytest's own interrupt name the test that hung.
    assert "Timeout (0:00:02)!" in printed.err
    assert "test_hung.py" in printed.err + printed.out
    assert "KeyboardInterrupt" in printed.out
    suite = ET.parse(run.REPORTS / "hung.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", 0)) >= 1


def test_a_stage_never_gets_more_than_the_suite_has_left(monkeypatch):
    monkeypatch.setattr(run, "SUITE_STARTED", time.monotonic() - run.SUITE_BUDGET)
    assert run.stage_limit("replicas") == 60.0
    monkeypatch.setattr(run, "SUITE_STARTED", time.monotonic())
    assert run.stage_limit("app") == run.STAGE_LIMITS["app"]
    assert run.stage_limit("replicas") <= run.SUITE_BUDGET - run.TEARDOWN_RESERVE
