"""Each hardened service's unit, the Debian package shipping it, the group of hosts running it,
and the highest exposure score it may have (systemd-analyze security: 0 is locked down, 10
unprotected). The fast tests score the units offline, the replica tests on their hosts."""

from __future__ import annotations

from bench.pools import role_default

# unit: (package shipping it, or None for the blueprint's own; group; bound)
BOUNDS = {
    "gunicorn.service": (None, "http", 2.0),
    f"daphne@{role_default('blueprint', 'daphne_base_port')}.service": (None, "ws", 2.0),
    "nginx.service": ("nginx-common", "lb", 4.0),
    "postgresql@15-main.service": ("postgresql-common", "db", 4.0),
    "prometheus.service": ("prometheus", "monitoring", 3.0),
    "prometheus-alertmanager.service": ("prometheus-alertmanager", "monitoring", 3.0),
    "prometheus-node-exporter.service": ("prometheus-node-exporter", "monitoring", 3.0),
    "prometheus-nginx-exporter.service": ("prometheus-nginx-exporter", "lb", 3.0),
    "mtail.service": ("mtail", "lb", 3.0),
    "prometheus-redis-exporter.service": ("prometheus-redis-exporter", "redis", 3.0),
    "prometheus-redis-exporter-sentinel.service": (None, "redis", 3.0),
    "prometheus-postgres-exporter.service": ("prometheus-postgres-exporter", "db", 3.0),
    # Debian's own hardening, kept as shipped.
    "redis-server.service": ("redis-server", "redis", 1.1),
    "redis-sentinel.service": ("redis-sentinel", "redis", 1.1),
}
# The units hardened by a drop-in of the blueprint (systemd/hardening.conf.j2).
DROP_INS = [unit for unit in BOUNDS if not unit.startswith(("gunicorn", "daphne", "redis-"))]
