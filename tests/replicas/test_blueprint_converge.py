"""site.yml converges the stack and a second run changes nothing (on Vagrant: `vagrant provision`)."""

import time

from tests.replicas.conftest import recap


def test_the_first_converge_succeeds_on_every_host(converged):
    for host, r in converged["recap"].items():
        assert r["failed"] == 0, host
        assert r["unreachable"] == 0, host


def test_a_second_run_changes_nothing(converged, stack):
    started = time.monotonic()
    result = stack.converge()
    print(f"\nfigure: idempotent re-run of site.yml ({stack.kind}): {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stdout[-4000:]
    changed = {host: r["changed"] for host, r in recap(result.stdout).items() if r["changed"]}
    assert changed == {}, result.stdout[-6000:]


def test_check_mode_on_the_converged_stack_reports_no_change_and_no_error(converged, stack):
    result = stack.playbook("site.yml", "--check", "--diff")
    assert result.returncode == 0, result.stdout[-4000:]
    summary = recap(result.stdout)
    assert all(r["failed"] == 0 for r in summary.values()), result.stdout[-4000:]
    changed = {host: r["changed"] for host, r in summary.items() if r["changed"]}
    assert changed == {}, result.stdout[-6000:]
