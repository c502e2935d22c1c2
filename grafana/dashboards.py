"""The stack's Grafana dashboards, as code (grafanalib).

    python grafana/dashboards.py          writes grafana/dashboards/<uid>.json
    python grafana/dashboards.py --check  fails when the committed JSON differs

The JSON is what Grafana loads (the grafana role provisions grafana/dashboards/);
tests/unit/test_dashboards.py fails when it drifts from this file, and the
replica tests run every panel's query against the live Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard, GridPos, Stat, Target, TimeSeries

OUT = Path(__file__).resolve().parent / "dashboards"
# The provisioned Prometheus datasource (grafana/provisioning/datasource.yml.j2).
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"


def panel(kind, title: str, *queries: tuple[str, str], unit: str = "short", description: str = ""):
    """A panel of `kind` with (expr, legend) queries; placed later by `layout`."""
    targets = [
        Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, (expr, legend) in enumerate(queries)
    ]
    options = {"unit": unit} if kind is TimeSeries else {"format": unit}
    return kind(title=title, dataSource=DATASOURCE, targets=targets, description=description, **options)


def layout(panels):
    """Stats four to a row, graphs two to a row, top to bottom."""
    x = y = row_height = 0
    for item in panels:
        w, h = (6, 4) if isinstance(item, Stat) else (12, 8)
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        item.gridPos = GridPos(h=h, w=w, x=x, y=y)
        x, row_height = x + w, max(row_height, h)
    return panels


def dashboard(uid: str, title: str, panels, description: str) -> Dashboard:
    return Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=["channels"],
        timezone="utc",
        refresh="30s",
        editable=False,
        panels=layout(panels),
    ).auto_panel_ids()


def channels_overview() -> Dashboard:
    return dashboard(
        "channels-overview",
        "Channels overview",
        [
            panel(Stat, "Open WebSockets", ("sum(websocket_connections)", "open")),
            panel(Stat, "Daphne instances up", ('sum(up{job="daphne"})', "up")),
            panel(Stat, "WS hosts", ('count(count by (host) (up{job="daphne"}))', "hosts")),
            panel(Stat, "Layer errors /s", (f"sum(rate(channel_layer_errors_total[{RATE}]))", "errors"), unit="reqps"),
            panel(
                TimeSeries, "Connections per instance", ("sum by (instance) (websocket_connections)", "{{instance}}")
            ),
            panel(TimeSeries, "Connections per host", ("sum by (host) (websocket_connections)", "{{host}}")),
            panel(
                TimeSeries,
                "Connections by endpoint",
                ("sum by (consumer) (websocket_connections)", "{{consumer}}"),
            ),
            panel(
                TimeSeries,
                "Connects and disconnects per second",
                (f"sum(rate(websocket_connections_opened_total[{RATE}]))", "connects"),
                (f"sum(rate(websocket_connections_closed_total[{RATE}]))", "disconnects"),
                unit="ops",
            ),
            panel(
                TimeSeries,
                "Rejections by reason",
                (f"sum by (reason) (rate(websocket_connections_rejected_total[{RATE}]))", "{{reason}}"),
                unit="ops",
                description=(
                    "connection_limit: a user's extra socket (close 4429); unauthenticated: no session; "
                    "draining: a handshake to an instance that is stopping (close 4001)."
                ),
            ),
            panel(
                TimeSeries,
                "Notifications: addressed, delivered, lost",
                (f"sum(rate(notifications_recipients_total[{RATE}]))", "addressed"),
                (f"sum(rate(notifications_delivered_total[{RATE}]))", "delivered"),
                (
                    f"clamp_min(sum(rate(notifications_recipients_total[{RATE}]))"
                    f" - sum(rate(notifications_delivered_total[{RATE}])), 0)",
                    "lost",
                ),
                unit="ops",
                description="Sockets each accepted notification was addressed to, and those it reached. "
                "Delivery is at most once: the difference is what was lost (alert NotificationsLost).",
            ),
            panel(
                TimeSeries,
                "Sockets sent away by a stopping instance",
                (f"sum by (instance) (rate(websocket_connections_drained_total[{RATE}]))", "{{instance}}"),
                unit="ops",
                description="Closed with 4001 (going away) by a deploy or a stop; their clients reconnect elsewhere.",
            ),
            panel(
                TimeSeries,
                "Messages in and out",
                (f"sum(rate(websocket_messages_received_total[{RATE}]))", "received"),
                (f"sum(rate(websocket_messages_sent_total[{RATE}]))", "sent"),
                unit="ops",
            ),
            panel(
                TimeSeries,
                "group_send latency",
                (
                    f"histogram_quantile(0.5, sum by (le) (rate(channel_layer_group_send_seconds_bucket[{RATE}])))",
                    "p50",
                ),
                (
                    f"histogram_quantile(0.95, sum by (le) (rate(channel_layer_group_send_seconds_bucket[{RATE}])))",
                    "p95",
                ),
                unit="s",
            ),
            panel(
                TimeSeries,
                "Channel layer errors by operation",
                (f"sum by (operation) (rate(channel_layer_errors_total[{RATE}]))", "{{operation}}"),
                unit="ops",
            ),
        ],
        "WebSocket connections, their churn and the channel layer, over every daphne instance.",
    )


def http_pool() -> Dashboard:
    return dashboard(
        "channels-http",
        "HTTP pool",
        [
            panel(Stat, "Requests /s", (f"sum(rate(http_requests_total[{RATE}]))", "req/s"), unit="reqps"),
            panel(Stat, "Live workers", ("sum(gunicorn_workers)", "workers")),
            panel(Stat, "gunicorn hosts up", ('sum(up{job="gunicorn"})', "up")),
            panel(
                Stat,
                "5xx share",
                (
                    f'(sum(rate(http_requests_total{{status=~"5.."}}[{RATE}])) or vector(0))'
                    f" / sum(rate(http_requests_total[{RATE}]))",
                    "5xx",
                ),
                unit="percentunit",
            ),
            panel(
                TimeSeries,
                "Requests by view",
                (f"sum by (view) (rate(http_requests_total[{RATE}]))", "{{view}}"),
                unit="reqps",
            ),
            panel(
                TimeSeries,
                "Responses by status",
                (f"sum by (status) (rate(http_requests_total[{RATE}]))", "{{status}}"),
                unit="reqps",
            ),
            panel(
                TimeSeries,
                "p95 latency by view",
                (
                    f"histogram_quantile(0.95, sum by (view, le) (rate(http_request_duration_seconds_bucket[{RATE}])))",
                    "{{view}}",
                ),
                unit="s",
            ),
            panel(TimeSeries, "Live workers per host", ("sum by (host) (gunicorn_workers)", "{{host}}")),
        ],
        "The gunicorn pool: traffic, errors, latency by view and live workers.",
    )


def redis_sentinel() -> Dashboard:
    return dashboard(
        "channels-redis",
        "Redis & Sentinel",
        [
            panel(Stat, "Masters", ('count(redis_instance_info{job="redis", role="master"})', "masters")),
            panel(Stat, "Linked replicas", ('sum(redis_connected_slaves{job="redis"})', "replicas")),
            panel(Stat, "Sentinels agreeing (min)", ('min(redis_sentinel_master_ok_sentinels{job="sentinel"})', "ok")),
            panel(Stat, "Quorum reachable", ('min(redis_sentinel_master_ckquorum_status{job="sentinel"})', "quorum")),
            panel(
                TimeSeries,
                "Master per shard",
                ('max by (shard, host) (redis_instance_info{job="redis", role="master"})', "shard {{shard}}: {{host}}"),
                description="Each channel-layer shard's master; a shard without a line has none (RedisNoMaster).",
            ),
            panel(
                TimeSeries,
                "Commands per second per shard (its master)",
                (
                    f'sum by (shard) (rate(redis_commands_processed_total{{job="redis"}}[{RATE}]) '
                    'and on (instance) redis_instance_info{job="redis", role="master"})',
                    "shard {{shard}}",
                ),
                unit="ops",
                description="What each shard's master serves: a shard near its CPU's limit is the one to split.",
            ),
            panel(
                TimeSeries,
                "Role per host (1 = master)",
                (
                    'max by (host) (redis_instance_info{job="redis", role="master"}) or '
                    'max by (host) (redis_instance_info{job="redis"}) * 0',
                    "{{host}}",
                ),
            ),
            panel(
                TimeSeries,
                "Failovers in the last hour",
                ('count by (host) (count_over_time(redis_sentinel_master_status{job="sentinel"}[1h])) - 1', "{{host}}"),
                description="Masters each sentinel named in the last hour, minus one.",
            ),
            panel(
                TimeSeries,
                "Replicas linked to each host",
                ('redis_connected_slaves{job="redis"}', "{{host}}"),
                description="The master shows its linked replicas; a drop is a broken link (RedisReplicaLinkDown).",
            ),
            panel(TimeSeries, "Memory used", ('redis_memory_used_bytes{job="redis"}', "{{host}}"), unit="bytes"),
            panel(
                TimeSeries,
                "Commands per second",
                (f'rate(redis_commands_processed_total{{job="redis"}}[{RATE}])', "{{host}}"),
                unit="ops",
            ),
            panel(TimeSeries, "Clients", ('redis_connected_clients{job="redis"}', "{{host}}")),
        ],
        "The channel layer: who is master, replication, Sentinel's quorum, load.",
    )


def nginx() -> Dashboard:
    return dashboard(
        "channels-nginx",
        "nginx",
        [
            panel(Stat, "nginx up", ("sum(nginx_up)", "up")),
            panel(Stat, "Active connections", ("sum(nginx_connections_active)", "active")),
            panel(
                TimeSeries,
                "Connections by state",
                ("sum by (host) (nginx_connections_reading)", "reading {{host}}"),
                ("sum by (host) (nginx_connections_writing)", "writing {{host}}"),
                ("sum by (host) (nginx_connections_waiting)", "waiting {{host}}"),
            ),
            panel(
                TimeSeries,
                "Requests per second",
                (f"sum by (host) (rate(nginx_http_requests_total[{RATE}]))", "{{host}}"),
                unit="reqps",
            ),
            panel(
                TimeSeries,
                "Proxied requests by pool",
                (f"sum by (pool) (rate(nginx_upstream_requests_total[{RATE}]))", "{{pool}}"),
                unit="reqps",
            ),
            panel(
                TimeSeries,
                "Upstream failures",
                (f"sum by (pool) (rate(nginx_upstream_failures_total[{RATE}])) or vector(0)", "{{pool}}"),
                unit="reqps",
                description="Requests a backend answered with 502/503/504 or a timeout (mtail, nginx's upstream log).",
            ),
            panel(
                TimeSeries,
                "Accepted vs handled connections",
                (f"sum(rate(nginx_connections_accepted[{RATE}]))", "accepted"),
                (f"sum(rate(nginx_connections_handled[{RATE}]))", "handled"),
                unit="ops",
                description="A gap means nginx dropped connections (worker_connections exhausted).",
            ),
        ],
        "The load balancers (stub_status through the nginx exporter).",
    )


def postgresql() -> Dashboard:
    return dashboard(
        "channels-postgresql",
        "PostgreSQL",
        [
            panel(Stat, "PostgreSQL up", ("min(pg_up)", "up")),
            panel(Stat, "App connections", ('sum(pg_stat_database_numbackends{datname="channels"})', "backends")),
            panel(
                TimeSeries,
                "Transactions per second",
                (f'sum(rate(pg_stat_database_xact_commit{{datname="channels"}}[{RATE}]))', "commits"),
                (f'sum(rate(pg_stat_database_xact_rollback{{datname="channels"}}[{RATE}]))', "rollbacks"),
                unit="ops",
            ),
            panel(
                TimeSeries,
                "Connections by database",
                ("sum by (datname) (pg_stat_database_numbackends)", "{{datname}}"),
            ),
            panel(
                TimeSeries, "Database size", ('pg_database_size_bytes{datname="channels"}', "channels"), unit="bytes"
            ),
        ],
        "The app's database.",
    )


def hosts() -> Dashboard:
    return dashboard(
        "channels-hosts",
        "Hosts",
        [
            panel(
                TimeSeries,
                "CPU busy",
                (f'1 - avg by (host) (rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}]))', "{{host}}"),
                unit="percentunit",
            ),
            panel(
                TimeSeries,
                "Memory available",
                ("node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{host}}"),
                unit="percentunit",
            ),
            panel(
                TimeSeries,
                "File descriptors in use",
                ("node_filefd_allocated / node_filefd_maximum", "{{host}}"),
                unit="percentunit",
            ),
            panel(TimeSeries, "Load (1 min)", ("node_load1", "{{host}}")),
            panel(
                TimeSeries,
                "Network received",
                (f'sum by (host) (rate(node_network_receive_bytes_total{{device!="lo"}}[{RATE}]))', "{{host}}"),
                unit="Bps",
            ),
            panel(
                TimeSeries,
                "TCP connections in use",
                ("node_sockstat_TCP_inuse", "{{host}}"),
            ),
        ],
        "Every host of the stack (node exporter).",
    )


DASHBOARDS = [channels_overview, http_pool, redis_sentinel, nginx, postgresql, hosts]


def render() -> dict[str, str]:
    """{file name: JSON text} of every dashboard."""
    rendered = {}
    for build in DASHBOARDS:
        board = build()
        data = json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder))
        rendered[f"{board.uid}.json"] = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return rendered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args()
    rendered = render()
    stale = [name for name, text in rendered.items() if not (OUT / name).exists() or (OUT / name).read_text() != text]
    extra = sorted(p.name for p in OUT.glob("*.json") if p.name not in rendered)
    if args.check:
        for name in stale + extra:
            print(f"grafana/dashboards/{name} differs from grafana/dashboards.py: run python grafana/dashboards.py")
        return 1 if stale or extra else 0
    OUT.mkdir(exist_ok=True)
    for name in stale:
        (OUT / name).write_text(rendered[name])
    for name in extra:
        (OUT / name).unlink()
    print(f"{len(rendered)} dashboards, {len(stale)} written, {len(extra)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
