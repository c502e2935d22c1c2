"""A run's figures as a table (each ASGI server's pool, the raw baseline, each ÷ raw), a JSON file and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run import BOUND_MS, NOTIFY_BOUND_MS, STEPPED, held


def _held_max(steps: list[dict], key: str, bound_ms: float) -> str | float:
    """The largest `key` of a step that held; "≥ N" when even the last step held (the steps ran out)."""
    good = [step[key] for step in steps if held(step, bound_ms)]
    if not good:
        return 0
    return f"≥ {good[-1]:g}" if len(good) == len(steps) else good[-1]


def _common_step(project: list[dict], raw: list[dict], key: str, bound_ms: float) -> tuple[dict, dict] | None:
    """The largest step (by `key`) both held, for comparing costs at the same load; else the first both ran."""
    both = {s[key]: s for s in project if held(s, bound_ms)}
    pairs = [(both[s[key]], s) for s in raw if held(s, bound_ms) and s[key] in both]
    if pairs:
        return pairs[-1]
    ran = {s[key]: s for s in project}
    pairs = [(ran[s[key]], s) for s in raw if s[key] in ran]
    return pairs[0] if pairs else None


def _per_event(points: list[tuple[float, dict[str, float]]]) -> tuple[dict[str, float], bool]:
    """Each master's rate of something (`points`: event rate, {master: its rate}) fitted against the event rate:
    the slope, what it adds per event (0 if it did not grow); with a single event rate, its rate over the
    events (an upper bound: not fitted)."""
    xs = [x for x, _ in points]
    mean_x = sum(xs) / len(xs)
    spread = sum((x - mean_x) ** 2 for x in xs)
    per_event, fitted = {}, True
    for master in sorted({m for _, ys in points for m in ys}):
        ys = [each.get(master, 0.0) for _, each in points]
        if spread > 0:
            mean_y = sum(ys) / len(ys)
            per_event[master] = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread)
        else:
            per_event[master], fitted = sum(ys) / sum(xs), False
    return per_event, fitted


def master_cost(steps: list[dict], events: str) -> dict | None:
    """What the Redis masters spend per event (`events`: a broadcast published, a notification accepted).

    Each master's CPU rate is fitted against the steps' event rates: the slope is its µs per
    event, leaving out what it spends with nothing to do (its timers, the Sentinels' and
    replicas' traffic, the app's renewals). A master whose CPU did not grow with the events
    (a shard the workload's names do not hash to) costs 0 per event. With a single rate
    there is nothing to fit: the master's CPU over the events, which counts that idle work
    too (an upper bound). One master running all of it holds 1e6 / the sum of the masters'
    µs events/s at 100 % of its core; the shards of this run hold 1e6 / the busiest one's.
    Each master's commands per event are fitted the same way (how the work split over shards).
    """
    measured = [s for s in steps if s.get("master_cpu_s") and s.get("seconds") and s.get(events)]
    if not measured:
        return None

    def rates(key: str) -> list[tuple[float, dict[str, float]]]:
        return [(s[events] / s["seconds"], {m: v / s["seconds"] for m, v in s[key].items()}) for s in measured]

    cpu, fitted = _per_event(rates("master_cpu_s"))
    per_event = {m: slope * 1e6 for m, slope in cpu.items()}
    commands = _per_event(rates("master_commands"))[0] if all(s.get("master_commands") for s in measured) else {}
    total, busiest = sum(per_event.values()), max(per_event.values())
    return {
        "us_per_event": {m: round(us, 1) for m, us in per_event.items()},
        "commands_per_event": {m: round(n, 1) for m, n in commands.items()},
        "fitted": fitted,
        "one_master_per_s": round(1e6 / total) if total else None,
        "shards_per_s": round(1e6 / busiest) if busiest else None,
        "masters": len(per_event),
    }


def summary(results: dict, server: str) -> list[tuple[str, object, object]]:
    """(figure, project, raw) rows, the project's pool running `server`: what the README quotes (rows of the
    workloads that ran)."""
    p, r, s = results[server], results["raw"], results["settings"]
    rows = []

    def row(workload: str, name: str, figure) -> None:
        if workload in p and workload in r:
            rows.append((name, figure(p), figure(r)))

    def last_notify(key: str):  # the most requests: the Redis servers' own connections matter least there
        return lambda x: x["notify"][-1][key] if x["notify"] else None

    row(
        "broadcast",
        f"sockets held at 1 broadcast/s (p95 ≤ {BOUND_MS} ms, 0 lost)",
        lambda x: _held_max(x["broadcast"], "sockets", BOUND_MS),
    )
    row("rate", f"broadcasts/s held at {s['rate_sockets']:,} sockets", lambda x: _held_max(x["rate"], "rate", BOUND_MS))
    row(
        "notify",
        f"notifications/s held, POST → socket (p95 < {NOTIFY_BOUND_MS} ms)",
        lambda x: _held_max(x["notify"], "rate", NOTIFY_BOUND_MS),
    )
    common = _common_step(p["rate"], r["rate"], "rate", BOUND_MS) if "rate" in p and "rate" in r else None
    if common:
        at = f"at {common[0]['sockets']:,} sockets, {common[0]['rate']:g}/s"
        for name, key in (
            ("p95 delivery, ms", "p95_ms"),
            ("CPU per delivered message, µs (ws processes)", "pool_cpu_us_per_msg"),
            ("CPU per delivered message, µs (all replicas)", "stack_cpu_us_per_msg"),
        ):
            rows.append((f"{name}, {at}", common[0][key], common[1][key]))
    row(
        "idle",
        f"CPU with {s['idle_sockets']:,} idle sockets, % of one core",
        lambda x: x["idle"]["cpu_pct_idle_sockets"],
    )
    row("idle", "CPU with no socket, % of one core", lambda x: x["idle"]["cpu_pct_no_socket"])
    row("idle", "memory per socket, KiB (PSS of the ws processes)", lambda x: x["idle"]["kib_per_socket"])
    for workload, events, noun, what in (
        ("notify", "accepted", "notification", "notification"),
        ("rate", "published", "broadcast", f"broadcast to {s['rate_sockets']:,} sockets"),
    ):
        costs = {kind: master_cost(x.get(workload, []), events) for kind, x in (("p", p), ("r", r))}
        if costs["p"] is None or costs["r"] is None:
            continue
        # One rate: nothing to fit, the masters' idle work is in the figure (an upper bound).
        bound = "" if costs["p"]["fitted"] and costs["r"]["fitted"] else " (one rate: idle work included)"
        rows.append(
            (
                f"Redis masters' CPU per {what}, µs{bound}",
                *(round(sum(c["us_per_event"].values()), 1) for c in costs.values()),
            )
        )
        rows.append(
            (
                f"{noun}s/s one Redis master holds (its core at 100 %)",
                costs["p"]["one_master_per_s"],
                costs["r"]["one_master_per_s"],
            )
        )
        if costs["p"]["masters"] > 1:
            # How the work split over the shards: what the busiest master's figure comes from.
            rows.append((f"Redis CPU per {what}, µs, each master", *(_each(c["us_per_event"]) for c in costs.values())))
            rows.append(
                (f"Redis commands per {what}, each master", *(_each(c["commands_per_event"]) for c in costs.values()))
            )
            rows.append(
                (
                    f"{noun}s/s these {costs['p']['masters']} shards hold (the busiest master at 100 %)",
                    costs["p"]["shards_per_s"],
                    costs["r"]["shards_per_s"],
                )
            )
    row("notify", "new Redis connections per notification", last_notify("new_redis_per_request"))
    row("notify", "new Sentinel connections per notification", last_notify("new_sentinel_per_request"))
    stepped = [w for w in STEPPED if w in p]
    if stepped:
        rows.append(
            (
                "client CPU, highest % of one core in a step",
                *(max((st["client_cpu_pct"] for w in stepped for st in x[w]), default=None) for x in (p, r)),
            )
        )
    return rows


def _each(per_master: dict[str, float]) -> str | None:
    return " · ".join(f"{m} {v:g}" for m, v in sorted(per_master.items())) or None


def _ratio(project, raw) -> str:
    def number(value):
        if isinstance(value, str):
            value = value.removeprefix("≥ ")
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    a, b = number(project), number(raw)
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def table(results: dict) -> str:
    """Figure | each server's pool | raw | each ÷ raw. A row one server lacks (a cost compared at a step
    the other did not hold) shows "—" there."""
    servers = results["servers"]
    rows: dict[str, dict] = {}
    for server in servers:
        for name, project, raw in summary(results, server):
            rows.setdefault(name, {"raw": raw})[server] = project
    header = ("figure", *servers, "raw", *(f"{server} ÷ raw" for server in servers))
    cells = [header] + [
        (
            name,
            *(_fmt(values.get(server)) for server in servers),
            _fmt(values["raw"]),
            *(_ratio(values.get(server), values["raw"]) for server in servers),
        )
        for name, values in rows.items()
    ]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def steps_table(results: dict, workload: str, key: str) -> str:
    """Every step of a workload, each server's pool and raw, for the record."""
    lines = [f"{workload}: {key}, p50 / p95 / p99 ms, lost, client CPU %"]
    for kind in (*results["servers"], "raw"):
        for step in results[kind][workload]:
            lines.append(
                f"  {kind:7} {step[key]:>8g}  {step['p50_ms']} / {step['p95_ms']} / {step['p99_ms']}  "
                f"lost {step['lost']}  client {step['client_cpu_pct']} %"
            )
    return "\n".join(lines)


# Each server's line style on the charts, and its name in the title; the raw baseline is dashed.
SERVER_STYLES = {"-": "solid", "-.": "dash-dot", ":": "dotted"}


def plots(results: dict, folder: Path) -> list[Path]:
    """Latency percentiles against sockets, broadcast rate and notification rate: every pool on one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    charts = [
        ("broadcast", "sockets", "sockets (1 broadcast/s)", BOUND_MS),
        ("rate", "rate", f"broadcasts/s at {results['settings']['rate_sockets']:,} sockets", BOUND_MS),
        ("notify", "rate", "notifications/s (POST → socket)", NOTIFY_BOUND_MS),
    ]
    for workload, key, label, bound in charts:
        if workload not in results["raw"]:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        styles = [*zip(results["servers"], SERVER_STYLES, strict=False), ("raw", "--")]
        for kind, style in styles:
            steps = [s for s in results[kind][workload] if s["p50_ms"] is not None]
            for pct, colour in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
                ax.plot(
                    [s[key] for s in steps],
                    [s[f"{pct}_ms"] for s in steps],
                    style,
                    marker="o",
                    color=colour,
                    label=f"{kind} {pct}",
                )
        ax.axhline(bound, color="grey", linewidth=0.8, linestyle=":", label=f"bound {bound} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("delivery latency, ms")
        kinds = ", ".join(f"{kind} ({SERVER_STYLES[style]})" for kind, style in styles[:-1])
        ax.set_title(f"{workload}: {kinds}, raw baseline (dashed)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = folder / f"{workload}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write(results: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "results.json"
    data.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return [data, *plots(results, folder)]
