import os
import subprocess

from replicas import host


def test_a_process_is_alive_until_it_is_gone():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert host._alive(child.pid)
        assert host._alive(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not host._alive(child.pid)


def test_a_process_reaped_while_its_stat_is_read_is_gone(monkeypatch):
    """Reading /proc/PID/stat of a process reaped after the open raises ESRCH; `./stack down` died on it."""

    def reaped(path, *args, **kwargs):
        raise ProcessLookupError(3, "No such process", path)

    monkeypatch.setattr(host, "open", reaped, raising=False)
    assert not host._alive(os.getpid())
