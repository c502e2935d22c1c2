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


def test_a_graceful_reload_serves_the_new_release_with_its_own_config(tmp_path):
    """deploy.yml switches the `current` link and sends HUP: new workers must load all of the new release.

    Loaded as python:config.gunicorn, the hooks imported the config package into the master,
    and reloaded workers ran the new code with the old release's config (settings, urls).
    """
    releases = tmp_path / "releases"
    skip = shutil.ignore_patterns(".venv", "__pycache__", ".pytest_cache", "*.sqlite3", "staticfiles")
    for name in ("a", "b"):
        shutil.copytree(APP, releases / name, ignore=skip)
    with (releases / "b" / "config" / "urls.py").open("a") as urls:
        urls.write("\nfrom django.http import HttpResponse  # noqa: E402\n")
        urls.write('urlpatterns += [path("release", lambda request: HttpResponse("b"))]\n')
    current = tmp_path / "current"
    current.symlink_to(releases / "a")
    port = free_port()
    env = app_env(tmp_path)
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
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "config.wsgi:application",
        ],
        cwd=current.resolve(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        next_link = tmp_path / "current.new"
        next_link.symlink_to(releases / "b")
        next_link.replace(current)
        process.send_signal(signal.SIGHUP)
        deadline, served = time.monotonic() + 30, None
        while served != "b" and time.monotonic() < deadline:
            try:
                served = get(port, "/release")
            except OSError:
                time.sleep(0.3)
        assert served == "b", "reloaded workers still route with the old release's config.urls"
    finally:
        process.terminate()
        process.wait(10)
