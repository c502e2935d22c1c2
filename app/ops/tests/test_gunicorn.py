"""Metrics under gunicorn with several workers: one /metrics adds up every worker."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testing import free_port, wait_for_port

APP = Path(__file__).resolve().parents[2]


def get(port: int, path: str) -> str:
    # A new connection each time, so requests spread over the workers.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def healthz_count(metrics: str) -> float:
    match = re.search(r'^http_requests_total\{method="GET",status="200",view="healthz"\} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def live_workers(metrics: str) -> float:
    match = re.search(r"^gunicorn_workers (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


def app_env(tmp_path: Path) -> dict[str, str]:
    """The app's environment under gunicorn: SQLite in tmp_path, the in-memory layer."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "PROMETHEUS_"))},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": "gunicorn-test-secret-key-0123456789abcdefghij",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CHANNEL_LAYER": "memory",
    }


@pytest.fixture
def gunicorn(tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"stale file of a previous run")
    port = free_port()
    env = {**app_env(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "config/gunicorn.py",
            "--workers",
            "3",
            "--bind",
            f"127.0.0.1:{port}",
            "config.wsgi:application",
        ],
        cwd=APP,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, timeout=30)
    yield process, port, metrics_dir
    process.terminate()
    process.wait(10)


def test_requests_over_several_workers_add_up_and_survive_a_worker_death(gunicorn):
    process, port, metrics_dir = gunicorn
    assert not (metrics_dir / "counter_99999.db").exists(), "stale metrics were not wiped at start"
    # Every worker has loaded the app (post_worker_init set its live gauge) before the
    # requests, or a slow machine leaves them all to the first worker up.
    deadline = time.monotonic() + 30
    while len(list(metrics_dir.glob("gauge_livesum_*.db"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(30):
        get(port, "/healthz")
    served_by = {p.name for p in metrics_dir.glob("counter_*.db")}
    assert len(served_by) >= 2, f"expected several workers to serve, files: {served_by}"
    assert healthz_count(get(port, "/metrics")) == 30

    worker = int(next(iter(served_by)).removeprefix("counter_").removesuffix(".db"))
    os.kill(worker, signal.SIGKILL)
    time.sleep(1.5)  # the master notices, runs child_exit (mark_process_dead), forks a new worker
    assert process.poll() is None
    assert healthz_count(get(port, "/metrics")) == 30  # a dead worker's counts are kept
    # The killed worker's live gauge is gone; its replacement counts once it is up.
    deadline = time.monotonic() + 15
    while (workers := live_workers(get(port, "/metrics"))) != 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers == 3


def children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_a_reload_serves_the_new_release_with_its_own_config_and_never_stops_serving(tmp_path):
    """deploy.yml switches the `current` link and reloads: new workers load all of the new release,
    and the old ones serve until the new ones have loaded it.

    Loaded as python:config.gunicorn, the hooks imported the config package into the master,
    and reloaded workers ran the new code with the old release's config (settings, urls).
    Under gunicorn's own HUP every old worker stopped as soon as the new ones were forked,
    and requests waited for the new release to import (the deploy drill's timeouts).
    """
    releases = tmp_path / "releases"
    skip = shutil.ignore_patterns(".venv", "__pycache__", ".pytest_cache", "*.sqlite3", "staticfiles")
    for name in ("a", "b"):
        shutil.copytree(APP, releases / name, ignore=skip)
        with (releases / name / "config" / "urls.py").open("a") as urls:
            urls.write("\nfrom django.http import HttpResponse  # noqa: E402\n")
            urls.write(f'urlpatterns += [path("release", lambda request: HttpResponse("{name}"))]\n')
    # Release b loads only once the gate is open: a slow import, held as long as the test needs.
    gate = tmp_path / "gate"
    wsgi = releases / "b" / "config" / "wsgi.py"
    wsgi.write_text(
        f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\n"
        + wsgi.read_text()
    )
    current = tmp_path / "current"
    current.symlink_to(releases / "a")
    booted = tmp_path / "booted"
    port = free_port()
    env = {**app_env(tmp_path), "GUNICORN_BOOTED_DIR": str(booted)}
    # As the unit runs it: started inside the release, --chdir and the hooks through the link.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(current / "config" / "gunicorn.py"),
            "--chdir",
            str(current),
            "--workers",
            "3",
            "--bind",
            f"127.0.0.1:{port}",
            "config.wsgi:application",
        ],
        cwd=current.resolve(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reload = None
    try:
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 30
        while len(list(booted.iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        old = children(process.pid)
        assert {int(p.name) for p in booted.iterdir()} == old
        next_link = tmp_path / "current.new"
        next_link.symlink_to(releases / "b")
        next_link.replace(current)
        # As the unit's ExecReload runs it.
        reload = subprocess.Popen(
            [sys.executable, "-I", str(current / "config" / "gunicorn.py"), str(process.pid), "30", "30"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while len(children(process.pid)) <= len(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children(process.pid) > old, "the reload forked no new worker"
        # The new worker is loading release b; the old ones answer meanwhile, at once (an old
        # worker that had served nothing yet imports the URLconf now, through the link: b).
        assert {get(port, "/release") for _ in range(10)} <= {"a", "b"}
        assert reload.poll() is None
        assert children(process.pid) >= old, "an old worker stopped before a new one had loaded"
        gate.touch()
        output, _ = reload.communicate(timeout=60)
        assert reload.returncode == 0, output
        assert "worker 3/3 replaced" in output
        deadline = time.monotonic() + 30
        while children(process.pid) & old and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not children(process.pid) & old, "old workers still running"
        assert len(children(process.pid)) == 3
        assert {get(port, "/release") for _ in range(10)} == {"b"}, "reloaded workers route with the old config.urls"
        assert process.poll() is None
    finally:
        gate.touch()
        if reload is not None and reload.poll() is None:
            reload.kill()
        process.terminate()
        process.wait(10)
