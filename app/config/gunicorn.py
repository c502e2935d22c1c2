"""Gunicorn hooks for Prometheus multiprocess metrics (``gunicorn -c config/gunicorn.py``).

Load it by path: ``-c python:config.gunicorn`` would import the ``config``
package into the master, and every worker forked after a graceful reload
(HUP) would inherit that release's settings instead of the new one's. For
the same reason the hooks import app modules only inside workers.

Sizes (workers, threads, timeouts, bind) come from the command line or
GUNICORN_CMD_ARGS; this file only keeps the metrics directory right:
emptied before the first worker starts, and a dead worker's live gauges
dropped so /metrics never counts connections of a process that is gone.

Run as a script it is the pool's reload (the unit's ExecReload):
``python -I config/gunicorn.py MASTER_PID BOOT_TIMEOUT GRACEFUL_TIMEOUT`` replaces the
workers one at a time, each old one told to stop only once a new one has
loaded the release (see ``roll``). Gunicorn's own HUP stops every old
worker as soon as the new ones are forked, and requests wait in the
listen queue until they have imported the app: seconds on a busy host.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

# Where each worker that has loaded the app leaves a file named by its pid.
BOOTED_DIR = "GUNICORN_BOOTED_DIR"


def _empty_dir(variable: str) -> Path | None:
    directory = os.environ.get(variable)
    if not directory:
        return None
    path = Path(directory)
    # Files of a previous run would be taken for this one's.
    if path.is_dir():
        for entry in path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def on_starting(server) -> None:
    _empty_dir("PROMETHEUS_MULTIPROC_DIR")
    _empty_dir(BOOTED_DIR)


def post_fork(server, worker) -> None:
    # Into the release the link names now, as HUP does: a worker added by TTIN
    # would otherwise start in the directory the master was started in.
    os.chdir(server.cfg.chdir)


def post_worker_init(worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from ops.metrics import HTTP_WORKERS

        HTTP_WORKERS.set(1)
    if booted := os.environ.get(BOOTED_DIR):
        (Path(booted) / str(os.getpid())).touch()


def child_exit(server, worker) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
    if booted := os.environ.get(BOOTED_DIR):
        (Path(booted) / str(worker.pid)).unlink(missing_ok=True)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _workers(master: int) -> set[int]:
    """Every child of `master`, a worker stopping but not yet reaped included."""
    return {pid for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()) if _parent(pid) == master}


def _booted_workers(master: int) -> set[int]:
    """Workers of `master` that have loaded the app (a file left by a dead one is not counted)."""
    booted = Path(os.environ[BOOTED_DIR])
    return {int(p.name) for p in booted.iterdir() if p.name.isdigit()} & _workers(master)


def _wait(condition, seconds: float, master: int, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if _parent(master) is None:
            sys.exit(f"the master (pid {master}) exited: {failure}")
        if time.monotonic() > deadline:
            sys.exit(f"{failure} within {seconds:.0f} s")
        time.sleep(0.1)


def roll(master: int, boot_timeout: float, graceful_timeout: float) -> None:
    """Replace every worker of `master` by one that loads the release on disk now, one at a time.

    For each old worker: TTIN (the master forks one more worker, which imports the
    app through the `current` link), wait until that worker has loaded it, then
    TTOU (the master stops its oldest worker gracefully: it finishes its requests)
    and wait until that one is gone. The pool never has fewer loaded workers than
    before. One signal at a time: two pending at once are delivered in signal-number
    order (TTIN before TTOU), and a TTIN while a stopped worker is still counted by
    the master forks nothing.
    A release that cannot load fails the reload: gunicorn halts on a worker that
    fails to boot, as it does under HUP, and the deploy stops at this host while the
    others serve. Settings of gunicorn itself (this file, the command line) take a restart.
    """
    old, size = _booted_workers(master), len(_workers(master))
    if not old:
        # A master started without the marker hook: gunicorn's own reload.
        print("no worker has reported in; falling back to HUP", file=sys.stderr)
        os.kill(master, signal.SIGHUP)
        return
    for replaced in range(1, len(old) + 1):
        before = _booted_workers(master)
        os.kill(master, signal.SIGTTIN)
        loaded = lambda before=before: _booted_workers(master) - before  # noqa: E731
        _wait(loaded, boot_timeout, master, "no new worker loaded the app")
        os.kill(master, signal.SIGTTOU)
        stopped = lambda: len(_workers(master)) <= size  # noqa: E731
        _wait(stopped, graceful_timeout + 5, master, "the oldest worker did not stop")
        print(f"worker {replaced}/{len(old)} replaced", flush=True)
    if left := old & _workers(master):
        print(f"old workers {sorted(left)} still run (stopped by something else meanwhile?)", file=sys.stderr)


if __name__ == "__main__":
    roll(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
