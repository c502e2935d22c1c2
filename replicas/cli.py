"""Command line: python -m replicas {up,down,status,ssh,reset,stop,start}."""

from __future__ import annotations

import argparse
import os
import sys

from . import topology
from .config import from_env
from .harness import Harness
from .system import HarnessError
from .topology import TopologyError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the base image if needed, boot every host, write the inventory")
    up.add_argument(
        "--topology",
        default=topology.chosen(),
        help=f"topology name in topologies/ or a YAML path (default: ${topology.TOPOLOGY_ENV}, "
        f"else {topology.DEFAULTS['topology']})",
    )
    sub.add_parser("down", help="stop every replica and remove all the harness made")
    sub.add_parser("status", help="list the replicas and their systemd state")
    ssh = sub.add_parser("ssh", help="open a root shell on HOST, or run CMD there")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    for name, text in (("reset", "recreate HOST from the base image"), ("start", "boot a stopped HOST")):
        sub.add_parser(name, help=text).add_argument("host")
    stop = sub.add_parser("stop", help="power HOST off (its disk is kept)")
    stop.add_argument("host")
    stop.add_argument("--kill", action="store_true", help="SIGKILL instead of a clean poweroff (crash drill)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("replicas: must run as root (systemd-nspawn, mounts, bridge)", file=sys.stderr)
        return 2
    try:
        harness = Harness(from_env())
        if args.command == "up":
            harness.up(args.topology)
        elif args.command == "down":
            harness.down()
        elif args.command == "status":
            rows = harness.status()
            if not rows:
                print("no replicas are up")
            for r in rows:
                print(f"{r['host']:<8} {r['address']:<15} {r['groups']:<32} pid={r['pid'] or '-':<8} {r['system']}")
        elif args.command == "ssh":
            return harness.ssh(args.host, args.cmd)
        elif args.command == "reset":
            harness.reset(args.host)
        elif args.command == "stop":
            harness.stop(args.host, kill=args.kill)
        elif args.command == "start":
            harness.start(args.host)
    except (HarnessError, TopologyError, ValueError) as exc:
        print(f"replicas: {exc}", file=sys.stderr)
        return 1
    return 0
