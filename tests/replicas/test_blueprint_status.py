"""status.yml, the stack's health in one table: a settled stack reads with nothing wrong, then a
service stopped by hand is named and fails the run, then the table is clean again once it is back.

Alerts are what Prometheus saw: one that the tests before raised (a Redis restarted in the last
ten minutes, say) still fires for its window, and status.yml rightly reports it. The checks
of this file's own making (hosts, services, Sentinel, replication, readiness) must be clean;
alerts firing are printed, and only they may fail a run here."""

from __future__ import annotations

import re
import time

import pytest

from tests.replicas.conftest import first, names

# The stack settles after the tests before (a pool stopped by a test comes back, its targets are scraped).
SETTLE_SECONDS = 180
ALERT_ROW = re.compile(r"^! \S+\s+alert \w+\s")
# An alert of severity info (a failover happened) is listed without being wrong.
INFO_ROW = re.compile(r"^\S+\s+alert \w+\s+info since ")


def rows(output: str) -> list[str]:
    """The table's lines, from the debug task's block (indented under `msg: |`), stripped."""
    if "TASK [The stack's state]" not in output:
        return []
    block = output.split("TASK [The stack's state]", 1)[1].split("TASK [", 1)[0]
    lines = block.split("msg: |", 1)[1].splitlines()[1:]
    return [line.strip() for line in lines if line.strip()]


def problems(table: list[str]) -> list[str]:
    """Rows marked wrong, but for alerts firing."""
    return [line for line in table if line.startswith("!") and not ALERT_ROW.match(line)]


def status(stack) -> tuple[int, list[str], str]:
    result = stack.playbook("status.yml")
    return result.returncode, rows(result.stdout), result.stdout + result.stderr


def settled(stack) -> tuple[int, list[str], str]:
    """status.yml until its own checks find nothing wrong (or SETTLE_SECONDS pass): the last run."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        code, table, output = status(stack)
        if (table and not problems(table)) or time.monotonic() > deadline:
            return code, table, output
        time.sleep(10)


@pytest.fixture(scope="module")
def calm(converged, stack):
    return settled(stack)


def test_a_settled_stack_reads_as_one_table_with_nothing_wrong(calm, stack):
    code, table, output = calm
    assert table, output[-3000:]
    alerts = [line for line in table if ALERT_ROW.match(line)]
    info = [line for line in table if INFO_ROW.match(line)]
    print("\n" + "\n".join(table))
    print(
        f"\nfigure: status.yml on the settled stack: {len(table) - 1} rows, {len(problems(table))} wrong, "
        f"alerts firing: {len(alerts)} (+{len(info)} info); exit code {code}"
    )
    assert problems(table) == []
    # The exit code says whether anything is wrong: here, only an alert still firing can be.
    assert (code == 0) == (alerts == []), (code, alerts)
    for host in [h.name for h in stack.topology.hosts]:
        assert any(re.match(rf"{host}\s+reachable\s+yes$", line) for line in table), host
        assert any(re.match(rf"{host}\s+services started at boot\s+\d+ wanted, 0 not active$", line) for line in table)
    daphne_rows = [line for line in table if re.match(r"ws\d+\s+daphne \d+\s+ready, \d+ sockets$", line)]
    assert len(daphne_rows) >= len(names("ws")), table
    assert sum(bool(re.match(r"http\d+\s+gunicorn\s+ready$", line)) for line in table) == len(names("http"))
    masters = [line for line in table if "sentinel: master" in line]
    assert len(masters) == len(names("redis")), masters
    assert all("sentinels usable" in line for line in masters), masters
    assert any(re.match(r"stack\s+one Redis master\s+redis\d+$", line) for line in table), table
    assert any(re.match(r"stack\s+Prometheus targets up\s+(\d+) of \1$", line) for line in table), table
    # The backup host's newest dump (the backup tests ran before), younger than the alert's age.
    dump = r"newest good dump [\d.]+ h old \(at most \d+ h\), \d+ kept, last run ok$"
    backup = rf"{first('monitoring')}\s+database backup\s+{dump}"
    assert any(re.match(backup, line) for line in table), table
    # The alerts' part was read: nothing firing, or what fires listed (info ones too, a failover earlier).
    assert any(re.match(r"stack\s+alerts firing\s+none$", line) for line in table) or alerts or info, table


def test_a_service_stopped_by_hand_is_named_and_fails_the_run(calm, stack, hosts):
    host = names("ws")[-1]
    units = hosts[host].run("systemctl list-units --plain --no-legend 'daphne@*.service'").stdout
    unit = re.findall(r"(daphne@\d+\.service)", units)[-1]
    hosts[host].run(f"systemctl stop {unit}")
    try:
        code, table, output = status(stack)
    finally:
        hosts[host].run(f"systemctl start {unit}")
    print("\n" + "\n".join(table))
    wrong = " | ".join(re.sub(r"\s+", " ", line) for line in problems(table))
    print(f"\nfigure: status.yml with {unit} stopped on {host}: exit code {code}; wrong: {wrong}")
    assert code != 0, output[-3000:]
    assert any(re.match(rf"! {host}\s+{re.escape(unit)}\s+inactive \(dead\)$", line) for line in table), table
    port = unit.split("@")[1].split(".")[0]
    assert any(re.match(rf"! {host}\s+daphne {port}\s+not ready", line) for line in table), table
    # Back: the table's own checks are clean again.
    code, table, output = settled(stack)
    assert problems(table) == [], output[-3000:]
