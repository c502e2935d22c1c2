"""Gunicorn hooks for Prometheus multiprocess metrics (``gunicorn -c config/gunicorn.py``).

Load it by path: ``-c python:config.gunicorn`` would import the ``config``
package into the master, and every worker forked after a graceful reload
(HUP) would inherit that release's settings instead of the new one's. For
the same reason the hooks import app modules only inside workers.

Sizes (workers, threads, timeouts, bind) come from the command line or
GUNICORN_CMD_ARGS; this file only keeps the metrics directory right:
emptied before the first worker starts, and a dead worker's live gauges
dropped so /metrics never counts connections of a process that is gone.
"""

import os
import shutil
from pathlib import Path


def on_starting(server) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    path = Path(directory)
    # Files of a previous run would be summed with this one's.
    if path.is_dir():
        for entry in path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)


def post_worker_init(worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from ops.metrics import HTTP_WORKERS

        HTTP_WORKERS.set(1)


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
