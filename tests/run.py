"""The whole test suite, as `./stack test` runs it (and CI, through .ci/run).

Stages run in order and stop at the first failing stage, so a broken lint or
unit test costs seconds, not a replica boot:

  1. fast    lint (ruff, yamllint, ansible-lint), then the app's tests and the
             unit tests side by side (each one's output printed whole at its end)
  2. replicas  tests on the container replicas (one shared stack per run)
  3. shards  the channel layer sharded (tests/replicas/test_shards.py) on a
             second, smaller stack of the sharded topology, then a ws host
             added to it and retired (tests/replicas/test_scale_out.py)

Whatever happens, the replicas are brought down at the end. The last line
sums every pytest run: "N passed, N failed".

A stage that hangs must not eat CI's whole limit: each pytest run has a time
limit (STAGE_LIMITS, and whatever is left of SUITE_BUDGET), after which it is
interrupted like a Ctrl-C, so pytest prints where it stood, writes its report
and tears its fixtures down (the replicas with them); a test that runs longer
than FAULTHANDLER_SECONDS also dumps every thread's stack on the way.

--vm runs the slow suite instead (`./stack test-vm`, not part of CI): a
Debian 12 box built here, `vagrant up --provider=libvirt` of the all-in-one
topology under QEMU's software emulation, `vagrant provision` (site.yml),
the blueprint's tests against the VM, then `vagrant destroy` and libvirt
stopped. It prints each step's time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import vms
from replicas.config import from_env
from replicas.topology import DEFAULTS, TOPOLOGY_ENV, chosen

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
REPORTS = ROOT / ".replicas-reports"


# The whole suite took 58 minutes in its last fresh-clone run (3,460 s; the
# shards stage 11 of them, the fast stage 3); CI stops it at 90. A hung stage is cut off so that
# the rest (teardown, replicas down, the summary) still runs within CI's limit.
SUITE_BUDGET = 80 * 60
# Per stage, seconds (several times what each takes on a 2-core machine).
STAGE_LIMITS = {"app": 15 * 60, "unit": 10 * 60}
# Kept back from the budget for what runs after a cut-off stage.
TEARDOWN_RESERVE = 5 * 60
# A test running longer than this dumps every thread's stack (and goes on);
# a replica test's time includes the shared stack's start (about 15 minutes).
FAULTHANDLER_SECONDS = {"app": 120, "unit": 120}
FAULTHANDLER_DEFAULT = 30 * 60
# After the interrupt, how long pytest has to report and tear down before it is killed.
INTERRUPT_GRACE = 4 * 60

# The shards stage: its topology and its tests, in order (the default topology's run leaves them out).
SHARDED_TOPOLOGY = "sharded"
SHARDS_TESTS = ["tests/replicas/test_shards.py", "tests/replicas/test_scale_out.py"]

SUITE_STARTED = time.monotonic()
# Steps run side by side print their output whole, one step at a time.
PRINTING = threading.Lock()


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = f"{VENV_BIN}:{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


def stage_limit(stage: str) -> float:
    """Seconds the stage may run: its own limit, and no more than the suite's budget leaves."""
    left = SUITE_BUDGET - TEARDOWN_RESERVE - (time.monotonic() - SUITE_STARTED)
    return min(STAGE_LIMITS.get(stage, SUITE_BUDGET), max(60.0, left))


def interruptible() -> None:
    # A runner started in the background (as CI starts it) has SIGINT ignored,
    # which its children inherit, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_limited(
    argv: list[str], cwd: Path, limit: float | None, extra: dict | None = None, output=None
) -> tuple[int, bool]:
    """(exit code, cut off): argv in a process group of its own, interrupted after limit seconds.

    Its stdout and stderr go to output (a file) if given, else to the runner's own."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env(extra),
        stdout=output,
        stderr=output,
        start_new_session=True,
        preexec_fn=interruptible,
    ) as process:
        try:
            return process.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # pytest: traceback, report, fixture teardown
            try:
                process.wait(timeout=INTERRUPT_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return process.returncode, True


def step(
    name: str,
    argv: list[str],
    cwd: Path = ROOT,
    limit: float | None = None,
    extra: dict | None = None,
    buffered: bool = False,
) -> bool:
    """Run argv; True if it passed. buffered: its output is kept and printed whole when it ends,
    so that steps run side by side (side_by_side) do not interleave their lines."""
    shown = " ".join([*(f"{k}={v}" for k, v in (extra or {}).items()), *argv])
    with PRINTING:
        print(f"\n=== {name}: {shown}" + (" (its output follows when it ends)" if buffered else ""), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryFile() if buffered else contextlib.nullcontext() as output:
        code, cut_off = run_limited(argv, cwd, limit, extra, output)
        captured = b""
        if output is not None:
            output.seek(0)
            captured = output.read()
    outcome = f"FAILED: cut off after its {limit:.0f} s limit" if cut_off else "ok" if code == 0 else "FAILED"
    with PRINTING:
        if buffered:
            print(f"\n=== {name}: output", flush=True)
            sys.stdout.buffer.write(captured)
            sys.stdout.buffer.flush()
        print(f"=== {name}: {outcome} in {time.monotonic() - started:.1f} s", flush=True)
    return code == 0 and not cut_off


def side_by_side(*steps) -> list[bool]:
    """Each step (a function returning True if it passed) in a thread of its own; their results in order."""
    with ThreadPoolExecutor(len(steps)) as pool:
        return list(pool.map(lambda run_step: run_step(), steps))


def pytest(
    name: str,
    args: list[str],
    cwd: Path = ROOT,
    limited: bool = True,
    extra: dict | None = None,
    buffered: bool = False,
) -> bool:
    report = REPORTS / f"{name}.xml"
    # Printed output goes into the report too, where figures() finds the measurements.
    argv = [str(VENV_BIN / "pytest"), f"--junitxml={report}", "-o", "junit_logging=system-out"]
    argv += ["-o", f"faulthandler_timeout={FAULTHANDLER_SECONDS.get(name, FAULTHANDLER_DEFAULT)}", *args]
    return step(name, argv, cwd=cwd, limit=stage_limit(name) if limited else None, extra=extra, buffered=buffered)


def figures() -> list[str]:
    """What the tests printed as measurements (lines "figure: ..."), from the reports."""
    lines = []
    for report in sorted(REPORTS.glob("*.xml")):
        for out in ET.parse(report).getroot().iter("system-out"):
            lines += [line.strip() for line in (out.text or "").splitlines() if line.strip().startswith("figure:")]
    return lines


def totals() -> tuple[int, int, int]:
    passed = failed = skipped = 0
    for report in sorted(REPORTS.glob("*.xml")):
        for suite in ET.parse(report).getroot().iter("testsuite"):
            tests, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            passed += tests - skip - bad
            failed += bad
            skipped += skip
    return passed, failed, skipped


def fast_stage() -> list[bool]:
    lints = [
        step("ruff", [str(VENV_BIN / "ruff"), "check", "."]),
        step("ruff (app)", [str(VENV_BIN / "ruff"), "check", "."], cwd=ROOT / "app"),
        step("yamllint", [str(VENV_BIN / "yamllint"), "--strict", "."]),
        step("ansible-lint", [str(VENV_BIN / "ansible-lint"), "ansible"]),
    ]
    # The app's tests wait on their real daphne, Redis and Sentinel processes for much of their
    # time (about 85 s of CPU in 150 s) while the unit tests' Ansible renders keep more than a
    # core busy: side by side, they take about the longer one's time instead of both.
    return lints + side_by_side(
        lambda: pytest("app", ["-q"], cwd=ROOT / "app", buffered=True),
        lambda: pytest("unit", ["-q", "tests/unit"], buffered=True),
    )


def replica_stage() -> list[bool]:
    # The harness drills name the scaled topology's hosts; another topology
    # (CHANNELS_TOPOLOGY=all-in-one) runs the blueprint's tests only. The
    # default one is followed by the shards stage, on a stack of its own.
    default = chosen() == DEFAULTS["topology"]
    if default:
        paths = ["tests/replicas", *(f"--ignore={path}" for path in SHARDS_TESTS)]
    else:
        paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests/replicas").glob("test_blueprint_*.py"))
    try:
        results = [pytest("replicas", ["-q", *paths])]
        if default and all(results):
            results.append(pytest("shards", ["-q", *SHARDS_TESTS], extra={TOPOLOGY_ENV: SHARDED_TOPOLOGY}))
        elif default:
            print("\n=== shards not run: the replica stage failed", flush=True)
        return results
    finally:
        # The session fixture brings the stack down too; this covers a killed pytest.
        step("replicas down", [str(VENV_BIN / "python"), "-m", "replicas", "down"])


def timed(name: str, action):
    print(f"\n=== {name}", flush=True)
    started = time.monotonic()
    result = action()
    print(f"=== {name}: ok in {time.monotonic() - started:.1f} s", flush=True)
    return result


def vm_stage() -> list[bool]:
    os.environ.update(vms.ENV)
    cfg = from_env()
    built, _ = timed("box (built once, cached by its recipe)", lambda: vms.ensure_box(cfg))
    timed("vagrant box add", lambda: vms.ensure_added(built))
    os.environ["CHANNELS_BOX"] = vms.BOX_NAME
    try:
        timed("libvirt up", vms.daemon().start)
        paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests/replicas").glob("test_blueprint_*.py"))
        # Software emulation: slow, and not part of CI's run; no time limit.
        return [pytest("vm", ["-q", *paths], limited=False)]
    finally:
        # The session fixture destroys the VMs too; this covers a killed pytest.
        vm_down()


def vm_down() -> None:
    """Whatever the VM tests left: VMs, then libvirt's daemon, networks and settings (`./stack down`)."""
    os.environ.update(vms.ENV)
    daemon = vms.daemon()
    if daemon.daemon_pid() is not None:
        step("vagrant destroy", ["vagrant", "destroy", "--force"])
    timed("libvirt down", daemon.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="only the fast stage (no replicas)")
    parser.add_argument("--vm", action="store_true", help="only the slow suite on Vagrant's VMs")
    parser.add_argument("--vm-down", action="store_true", help="remove what an interrupted --vm run left")
    args = parser.parse_args()
    if args.vm_down:
        vm_down()
        return 0
    REPORTS.mkdir(exist_ok=True)
    for old in REPORTS.glob("*.xml"):
        old.unlink()
    started = time.monotonic()
    if args.vm:
        results = vm_stage()
    else:
        results = fast_stage()
        if all(results) and not args.fast:
            results += replica_stage()
        elif not all(results):
            print("\n=== replica tests not run: the fast stage failed", flush=True)
    measured = figures()
    if measured:
        print("\n=== figures printed by the tests (measured, not asserted)")
        print("\n".join(measured))
    passed, failed, skipped = totals()
    print(f"\n=== suite finished in {time.monotonic() - started:.0f} s; stages ok: {sum(results)}/{len(results)}")
    line = f"{passed} passed, {failed} failed"
    print(line + (f", {skipped} skipped" if skipped else ""))
    return 0 if all(results) and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
