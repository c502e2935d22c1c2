"""Backups of the app's database as an SRE relies on them: taken on schedule from the backup host
by a role that can read and nothing else, their state as metrics, a failed run counted and leaving
the good dumps alone, the retention, and restore.yml bringing a dropped table's rows back, over
the live database and beside it."""

from __future__ import annotations

import re
import time

import pytest

from bench.pools import role_default
from tests.replicas.conftest import fact, first

BACKUP = first("monitoring")  # blueprint_backup_host: the first monitoring host
DB = first("db")
DATABASE = fact("postgresql_app_database")
APP_USER = fact("postgresql_app_user")
BACKUP_USER = fact("postgresql_backup_user")
FOLDER = role_default("postgresql_backup", "postgresql_backup_dir")
KEEP = role_default("postgresql_backup", "postgresql_backup_keep")
SYSTEM_USER = role_default("postgresql_backup", "postgresql_backup_system_user")
PROBE_ROWS = 1000


def dumps(hosts) -> list[str]:
    """The good dumps in the backups' folder, oldest first."""
    out = hosts[BACKUP].run("find %s -maxdepth 1 -name '%s-*.dump' -printf '%%f\\n'", FOLDER, DATABASE)
    assert out.rc == 0, out.stderr
    return sorted(out.stdout.split())


def back_up(hosts) -> tuple[int, float, str]:
    """One run of the backup unit, as the timer starts it: (exit code, seconds, its journal's last lines)."""
    started = time.monotonic()
    run = hosts[BACKUP].run("systemctl start postgresql-backup.service")
    seconds = time.monotonic() - started
    journal = hosts[BACKUP].run("journalctl -u postgresql-backup.service -n 8 --no-pager -o cat").stdout
    return run.rc, seconds, journal


def metrics(hosts, stack) -> dict[str, float]:
    """The backups' samples as Prometheus scrapes them from the backup host's node exporter."""
    url = f"http://{stack.address(BACKUP)}:{fact('exporters_node_port')}/metrics"
    out = hosts[BACKUP].run("curl -sf %s", url)
    assert out.rc == 0, out.stderr
    return {
        name: float(value) for name, value in re.findall(r"^(postgresql_backup_\w+)\{[^}]*\} (\S+)$", out.stdout, re.M)
    }


def sql(hosts, statement: str, database: str = DATABASE, role: str = APP_USER):
    """A statement on the db host as `role` (postgres over the local socket, then SET ROLE)."""
    return hosts[DB].run(
        "cd /tmp && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d %s -tA -c %s -c %s",
        database,
        f"SET ROLE {role}",
        statement,
    )


@pytest.fixture(scope="module")
def probe(converged, hosts):
    """A table of the app's role with PROBE_ROWS rows; dropped at the end."""
    made = sql(
        hosts,
        "DROP TABLE IF EXISTS backup_probe; CREATE TABLE backup_probe (id int PRIMARY KEY, note text);"
        f" INSERT INTO backup_probe SELECT i, md5(i::text) FROM generate_series(1, {PROBE_ROWS}) i;",
    )
    assert made.rc == 0, made.stderr
    yield "backup_probe"
    sql(hosts, "DROP TABLE IF EXISTS backup_probe")


def test_backups_run_on_schedule_on_the_backup_host_with_a_read_only_role(converged, hosts, stack):
    backup = hosts[BACKUP]
    timer = backup.service("postgresql-backup.timer")
    assert timer.is_enabled
    assert timer.is_running
    listed = backup.run("systemctl list-timers --no-pager postgresql-backup.timer").stdout
    assert "postgresql-backup.service" in listed, listed
    # site.yml took the first one: a new stack is covered from the start.
    kept = dumps(hosts)
    assert kept, "no dump after site.yml"
    newest = backup.file(f"{FOLDER}/{kept[-1]}")
    assert (newest.user, newest.mode) == (SYSTEM_USER, 0o640)
    assert backup.file(FOLDER).mode == 0o750
    assert backup.file("/etc/postgresql-backup/pgpass").mode == 0o600
    # The database lets the backups' role in from the backup host only, and it writes nothing.
    hba = hosts[DB].file("/etc/postgresql/15/main/pg_hba.conf").content_string
    allowed = {line.split()[3] for line in hba.splitlines() if line.startswith("host ") and BACKUP_USER in line.split()}
    assert allowed == {f"{stack.address(BACKUP)}/32"}
    as_backup = "PGPASSFILE=/etc/postgresql-backup/pgpass psql -X -h %s -U %s -d %s -tAc %s"
    address = stack.address(DB)
    read = backup.run(as_backup, address, BACKUP_USER, DATABASE, "select count(*) > 0 from auth_user")
    assert read.stdout.strip() == "t", read.stderr
    write = backup.run(as_backup, address, BACKUP_USER, DATABASE, "delete from django_session")
    assert write.rc != 0
    assert "permission denied" in write.stderr, write.stdout + write.stderr
    exposure = backup.run("systemd-analyze security --no-pager postgresql-backup.service").stdout
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d)", exposure)[1])
    print(f"\nfigure: postgresql-backup.service exposure on {BACKUP}: {score} (bound 2.0)")
    assert score <= 2.0


def test_a_dropped_table_comes_back_with_restore_yml(probe, hosts, stack):
    before = dumps(hosts)
    code, seconds, journal = back_up(hosts)
    assert code == 0, journal
    after = dumps(hosts)
    assert after[-1] not in before, (before, after)
    size = hosts[BACKUP].file(f"{FOLDER}/{after[-1]}").size
    samples = metrics(hosts, stack)
    assert samples["postgresql_backup_last_run_success"] == 1
    assert abs(time.time() - samples["postgresql_backup_last_success_timestamp_seconds"]) < 120
    assert samples["postgresql_backup_last_size_bytes"] == size
    print(f"\nfigure: backup of {DATABASE} ({PROBE_ROWS} probe rows): {size} bytes in {seconds:.1f} s")

    # Lose the table, and write after the backup: the restore brings the dump's state back.
    lost = sql(hosts, f"DROP TABLE {probe}")
    assert lost.rc == 0, lost.stderr
    assert sql(hosts, f"SELECT count(*) FROM {probe}").rc != 0

    started = time.monotonic()
    restored = stack.playbook("restore.yml")
    seconds = time.monotonic() - started
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-2000:]
    assert f"restored {after[-1]} from {BACKUP} into {DATABASE}" in restored.stdout
    count = sql(hosts, f"SELECT count(*), count(DISTINCT note) FROM {probe}")
    assert count.stdout.strip() == f"{PROBE_ROWS}|{PROBE_ROWS}", count.stdout + count.stderr
    owner = sql(hosts, f"SELECT tableowner FROM pg_tables WHERE tablename = '{probe}'")
    assert owner.stdout.strip() == APP_USER
    # The app's own tables came back too, and its role logs in.
    assert sql(hosts, "SELECT count(*) > 0 FROM auth_user").stdout.strip() == "t"
    left = hosts[DB].run("ls /var/lib/postgresql/*.dump 2>/dev/null | wc -l").stdout.strip()
    assert left == "0", "the dump's copy was left on the database host"
    print(f"\nfigure: restore.yml (the newest dump over {DATABASE}): {seconds:.1f} s, {PROBE_ROWS} rows back")


def test_restore_yml_into_a_database_beside_the_live_one(probe, hosts, stack):
    side = f"{DATABASE}_restored"
    try:
        restored = stack.playbook("restore.yml", "-e", f"restore_into={side}")
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-2000:]
        count = sql(hosts, f"SELECT count(*) FROM {probe}", database=side)
        assert count.stdout.strip() == str(PROBE_ROWS), count.stdout + count.stderr
        assert sql(hosts, f"SELECT count(*) FROM {probe}").stdout.strip() == str(PROBE_ROWS)
        wrong = stack.playbook("restore.yml", "-e", "restore_dump=no-such.dump", "-e", f"restore_into={side}")
        assert wrong.returncode != 0
        assert "No dump named no-such.dump" in wrong.stdout, wrong.stdout[-2000:]
    finally:
        hosts[DB].run("cd /tmp && runuser -u postgres -- dropdb --if-exists %s", side)


def test_a_failed_backup_is_counted_and_leaves_the_good_dumps(converged, hosts, stack):
    before = dumps(hosts)
    refused = sql(hosts, f"ALTER ROLE {BACKUP_USER} NOLOGIN", role="postgres")
    assert refused.rc == 0, refused.stderr
    try:
        code, _, journal = back_up(hosts)
    finally:
        sql(hosts, f"ALTER ROLE {BACKUP_USER} LOGIN", role="postgres")
    assert code != 0, journal
    assert "not permitted to log in" in journal, journal
    assert dumps(hosts) == before
    partial = hosts[BACKUP].run("find %s -name '*.partial' | wc -l", FOLDER).stdout.strip()
    assert partial == "0"
    samples = metrics(hosts, stack)
    assert samples["postgresql_backup_last_run_success"] == 0
    assert samples["postgresql_backup_dumps"] == len(before)
    code, _, journal = back_up(hosts)
    assert code == 0, journal
    assert metrics(hosts, stack)["postgresql_backup_last_run_success"] == 1


def test_the_newest_dumps_are_kept_and_the_older_removed(converged, hosts, stack):
    seen = set(dumps(hosts))
    for _ in range(max(0, KEEP - len(seen)) + 2):
        time.sleep(1.1)  # one dump per second: their names are their UTC time
        code, _, journal = back_up(hosts)
        assert code == 0, journal
        seen |= set(dumps(hosts))
    kept = dumps(hosts)
    assert kept == sorted(seen)[-KEEP:]
    assert metrics(hosts, stack)["postgresql_backup_dumps"] == KEEP
    print(f"\nfigure: retention: {len(seen)} dumps taken, the newest {len(kept)} kept (postgresql_backup_keep {KEEP})")
