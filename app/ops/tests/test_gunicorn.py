"""Metrics under gunicorn with several workers: one /metrics adds up every worker."""

import os
import re
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


@pytest.fixture
def gunicorn(tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"stale file of a previous run")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": "gunicorn-test-secret-key-0123456789abcdefghij",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CHANNEL_LAYER": "memory",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:config.gunicorn",
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
