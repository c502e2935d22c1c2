"""The suite runner's time limits: a hung stage is cut off, reports where it
stood, and leaves the rest of the run its time (tests/run.py)."""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET

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
