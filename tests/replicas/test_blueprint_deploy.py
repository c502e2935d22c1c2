"""deploy.yml rolls a new app version out, one host at a time, without restarting gunicorn."""

from __future__ import annotations

from tests.replicas.conftest import changed_app, first, names, recap, unique

APP_HOSTS = unique("http", "ws")
MARKER = "<!-- rolled out by deploy.yml -->"


def current_release(host) -> str:
    return host.run("readlink -f /opt/channels/current").stdout.strip()


def workers(host, master: str) -> set[str]:
    return set(host.run("cat /proc/%s/task/%s/children", master, master).stdout.split())


def test_deploy_rolls_a_new_version_out_host_by_host(converged, hosts, stack, tmp_path):
    before = {name: current_release(hosts[name]) for name in APP_HOSTS}
    assert len(set(before.values())) == 1
    masters = {name: hosts[name].service("gunicorn").systemd_properties["MainPID"] for name in names("http")}
    old_workers = {name: workers(hosts[name], masters[name]) for name in masters}

    source = changed_app(tmp_path, MARKER)
    result = stack.playbook("deploy.yml", "-e", f"app_source_path={source}")
    assert result.returncode == 0, result.stdout[-5000:]
    assert all(r["failed"] == 0 for r in recap(result.stdout).values())
    # serial: 1 means one batch per host: every pool's play ran once per host (site.yml runs
    # the same plays, pools.yml, every host at once).
    assert result.stdout.count("PLAY [HTTP pool]") == len(names("http"))
    assert result.stdout.count("PLAY [WebSocket pool]") == len(names("ws"))

    after = {name: current_release(hosts[name]) for name in APP_HOSTS}
    assert len(set(after.values())) == 1
    assert set(after.values()) != set(before.values())
    # gunicorn took the new code with a graceful reload: its master never restarted.
    assert {name: hosts[name].service("gunicorn").systemd_properties["MainPID"] for name in masters} == masters
    # ...and every worker was replaced, as many as before (the reload returns once they are).
    for name, old in old_workers.items():
        new = workers(hosts[name], masters[name])
        assert len(new) == len(old), (name, old, new)
        assert not new & old, (name, old, new)
    lb = stack.address(first("lb"))
    served = hosts[first("lb")].run("curl -sfk https://%s/", lb)
    assert served.rc == 0, served.stderr
    assert MARKER in served.stdout
    for name in names("ws"):
        active = hosts[name].run("systemctl list-units --state=active --plain --no-legend 'daphne@*'").stdout
        assert len(active.splitlines()) == int(hosts[name].run("nproc").stdout)
