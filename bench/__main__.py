"""`./stack bench`: what the stack holds, side by side with a raw fan-out baseline measured in the same run.

The replicas come up (or a running stack is taken over) and site.yml converges
them, as `./stack test` does; the stack is brought down afterwards only if this
run brought it up. Figures: a table on stdout, results.json and PNG plots in
--out (default .bench/).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

from bench import report
from bench.load import Site
from bench.pools import ROOT, asgi_servers, stack_secrets
from bench.run import SMOKE, WORKLOADS, Settings, run, sources_needed
from replicas.config import from_env
from replicas.harness import Harness
from replicas.topology import chosen, load
from tests.stacks import ReplicaStack


def site_of(stack, secrets: dict[str, str], folder: Path) -> Site:
    """nginx's URL with its certificate trusted, and the notification API's token (the notify workload makes
    its own users: bench.run.run)."""
    lb = stack.topology.group("lb")[0].name
    cert = stack.run(lb, "cat /etc/nginx/tls/channels.crt")
    if cert.returncode != 0:
        raise RuntimeError(f"{lb}: no certificate: {cert.stderr}")
    cafile = folder / "lb.crt"
    cafile.write_text(cert.stdout)
    return Site(f"https://{stack.address(lb)}", str(cafile), token=secrets["app_notify_api_token"])


def measure(stack, settings: Settings, folder: Path, say=print) -> dict:
    """Every workload on a converged stack: results written to `folder`, the table printed."""
    # The client holds a descriptor per socket.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, settings.max_sockets() + 1024)), hard))
    folder.mkdir(parents=True, exist_ok=True)
    secrets = stack_secrets()
    site = site_of(stack, secrets, folder)
    # nginx limits connections per address (and must): the client spreads its sockets over
    # addresses of its own on the harness's bridge.
    with stack.harness.client_addresses(sources_needed(settings)) as sources:
        results = asyncio.run(run(stack, secrets, site, sources, settings, say=say))
    results["client_addresses"] = len(sources)
    results["machine"] = {"cpus": os.cpu_count(), "uname": " ".join(os.uname())}
    files = report.write(results, folder)
    say("\n" + report.table(results))
    for workload, key in (("broadcast", "sockets"), ("rate", "rate"), ("notify", "rate")):
        if workload not in settings.workloads:
            continue
        say("\n" + report.steps_table(results, workload, key))
    say("\nwritten: " + ", ".join(str(f) for f in files))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="./stack bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small counts, seconds: proves the bench runs")
    parser.add_argument(
        "--only",
        action="append",
        choices=WORKLOADS,
        help="run this workload only (repeatable): a change's before and after, quicker",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=asgi_servers(),
        help="the project's pool on this ASGI server only (repeatable); default: on each, side by side",
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".bench", help="where results.json and the plots go")
    parser.add_argument("--topology", default=chosen())
    args = parser.parse_args()
    settings = SMOKE if args.smoke else Settings()
    if args.only:
        settings = dataclasses.replace(settings, workloads=tuple(args.only))
    if args.server:
        settings = dataclasses.replace(settings, servers=tuple(args.server))
    stack = ReplicaStack(Harness(from_env()), load(args.topology))
    started = time.monotonic()
    brought_up = stack.up()["booted"]
    try:
        converged = stack.converge()
        if converged.returncode != 0:
            print(converged.stdout[-4000:], converged.stderr[-2000:], file=sys.stderr)
            return 1
        print(f"bench: stack converged in {time.monotonic() - started:.0f} s", flush=True)
        measure(stack, settings, args.out, say=lambda line: print(line, flush=True))
    finally:
        if brought_up:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
