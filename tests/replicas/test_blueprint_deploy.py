"""deploy.yml rolls a new app version out, one host at a time, without restarting gunicorn.

On the replicas the deploy drill (test_drills.py) rolls a release out under load and makes these
same checks (`app_state`, `rolled_out`), so one deploy proves both there; this test is the VM suite's.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.replicas.conftest import STACK_KIND, changed_app, first, names, recap, unique

MARKER = "<!-- rolled out by deploy.yml -->"


def current_release(host) -> str:
    return host.run("readlink -f /opt/channels/current").stdout.strip()


def workers(host, master: str) -> set[str]:
    return set(host.run("cat /proc/%s/task/%s/children", master, master).stdout.split())


def daphne_processes(host) -> set[str]:
    return set(host.run("systemctl show -p MainPID --value 'daphne@*'").stdout.split())


def app_state(hosts) -> dict:
    """Each app host's current release; each HTTP host's gunicorn master and its workers; each WebSocket
    host's daphne processes."""
    masters = {name: hosts[name].service("gunicorn").systemd_properties["MainPID"] for name in names("http")}
    return {
        "releases": {name: current_release(hosts[name]) for name in unique("http", "ws")},
        "masters": masters,
        "workers": {name: workers(hosts[name], master) for name, master in masters.items()},
        "daphne": {name: daphne_processes(hosts[name]) for name in names("ws")},
    }


def ran_on(output: str, task: str) -> list[str]:
    """The hosts a task ran on (ok or changed, not skipped), each time its header appears in `output`."""
    hosts = []
    for block in output.split("\nTASK [")[1:]:
        if block.startswith(task + "]"):
            hosts += re.findall(r"^(?:ok|changed): \[([^\]\s]+)", block, re.MULTILINE)
    return hosts


def rolled_out(hosts, stack, result: subprocess.CompletedProcess, before: dict, marker: str) -> None:
    """deploy.yml's run `result` rolled the release with `marker` out as it should, from `before` (app_state)."""
    assert result.returncode == 0, result.stdout[-5000:]
    assert all(r["failed"] == 0 for r in recap(result.stdout).values())
    # serial: 1 means one batch per host: every pool's play ran once per host (site.yml runs
    # the same plays, pools.yml, every host at once).
    assert result.stdout.count("PLAY [HTTP pool]") == len(names("http"))
    assert result.stdout.count("PLAY [WebSocket pool]") == len(names("ws"))
    # Migrations, the admin and the static files once per run, not once per host.
    assert ran_on(result.stdout, "app : Migrate the database (once per deploy)") == [first("http")]

    after = app_state(hosts)
    assert len(set(before["releases"].values())) == 1, before
    assert len(set(after["releases"].values())) == 1, after
    assert set(after["releases"].values()) != set(before["releases"].values())
    # gunicorn took the new code with a graceful reload: its master never restarted, and every
    # worker was replaced, as many as before (the reload returns once they are).
    assert after["masters"] == before["masters"]
    for name, old in before["workers"].items():
        new = after["workers"][name]
        assert len(new) == len(old), (name, old, new)
        assert not new & old, (name, old, new)
    served = hosts[first("lb")].run("curl -sfk https://%s/", stack.address(first("lb")))
    assert served.rc == 0, served.stderr
    assert marker in served.stdout
    # Every daphne process was replaced: daphne has no reload. On a host of both pools (all-in-one) the
    # HTTP play makes the release current, and the WebSocket play restarts daphne all the same.
    for name in names("ws"):
        active = hosts[name].run("systemctl list-units --state=active --plain --no-legend 'daphne@*'").stdout
        assert len(active.splitlines()) == int(hosts[name].run("nproc").stdout)
        assert len(after["daphne"][name]) == len(before["daphne"][name]), (name, before["daphne"], after["daphne"])
        assert not after["daphne"][name] & before["daphne"][name], (name, before["daphne"], after["daphne"])


@pytest.mark.skipif(
    STACK_KIND == "replicas",
    reason="on the replicas test_drills.py's deploy under load rolls a release out and makes these checks (rolled_out)",
)
def test_deploy_rolls_a_new_version_out_host_by_host(converged, hosts, stack, tmp_path):
    before = app_state(hosts)
    source = changed_app(tmp_path, MARKER)
    result = stack.playbook("deploy.yml", "-e", f"app_source_path={source}")
    rolled_out(hosts, stack, result, before, MARKER)
