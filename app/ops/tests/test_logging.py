"""The JSON log lines, and their priority for journald (config/logging.py)."""

import json
import logging

import pytest

from config.logging import JsonFormatter, syslog_priority, writes_to_journal


def record(level: int, message: str = "m", **extra) -> logging.LogRecord:
    made = logging.LogRecord("app.test", level, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_a_line_is_one_json_object_with_the_extras():
    line = JsonFormatter(journal=False).format(record(logging.WARNING, "slot lost", group="user.7", when=object()))
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "app.test", "slot lost")
    assert entry["group"] == "user.7"
    assert entry["when"].startswith("<object object")


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (35, 4),  # custom levels: the next standard one below
        (5, 7),
    ],
)
def test_the_journal_gets_each_line_at_its_level_priority(level, priority):
    assert syslog_priority(level) == priority
    line = JsonFormatter(journal=True).format(record(level))
    assert line.startswith(f"<{priority}>{{")
    assert json.loads(line.removeprefix(f"<{priority}>"))["message"] == "m"


def test_the_prefix_only_when_stdout_is_the_journal_stream(tmp_path, monkeypatch):
    with open(tmp_path / "out", "w") as stream:
        stat = (tmp_path / "out").stat()
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        assert writes_to_journal(stream)
        # Another stream: the service's stdout was redirected to a file.
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")
        assert not writes_to_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not writes_to_journal(stream)
    assert not writes_to_journal(object())  # no file behind it (a test runner's capture)
