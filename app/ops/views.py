"""Liveness, readiness, metrics and the async aggregation endpoint."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from realtime import drain, redis_client
from realtime.layer import round_trip


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Checks nothing else, costs nothing."""
    return JsonResponse({"status": "ok"})


def _database_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def check_database() -> dict:
    await sync_to_async(_database_ping)()
    return {}


async def check_channel_layer() -> dict:
    """A message to this process and back, on the path its sockets' messages take.

    The channel shares the consumers' prefix on purpose: channels_redis reads
    all of a process's channels of one prefix with one blocking read, shared
    by whichever coroutine holds its receive lock. A channel of its own prefix
    ("readyz.") could only be read by this check once it got the lock, queued
    behind every idle socket's one-second read: with 100 sockets, 100 s (the
    check timed out on every try of a deploy under load).
    """
    return {"backend": type(await round_trip()).__name__}


async def check_redis() -> dict:
    if not redis_client.configured():
        return {"skipped": "no Redis configured (in-memory channel layer)"}
    roles = [await _redis_role(shard) for shard in range(redis_client.shard_count())]
    return {"role": roles[0]} if len(roles) == 1 else {"roles": roles}


async def _redis_role(shard: int) -> str | None:
    """One shard's master answers, as its replication role says."""
    client = redis_client.new_client(shard)
    try:
        await client.ping()
        info = await client.info("replication")
        return info.get("role")
    finally:
        await client.aclose()


CHECKS = {"database": check_database, "channel_layer": check_channel_layer, "redis": check_redis}


async def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.READYZ_TIMEOUT):
            detail = await check()
        result = {"ok": True, **detail}
    except TimeoutError:
        result = {"ok": False, "error": f"timed out after {settings.READYZ_TIMEOUT}s"}
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, channel layer round trip and Redis, checked concurrently.

    A process that is draining (realtime/drain.py) is not ready, whatever its checks say.
    """
    if drain.draining():
        return JsonResponse({"status": "draining", "checks": {}}, status=503)
    results = await asyncio.gather(*(_timed(check) for check in CHECKS.values()))
    checks = dict(zip(CHECKS, results, strict=True))
    ready = all(r["ok"] for r in results)
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


async def _fetch(client: httpx.AsyncClient, url: str) -> dict:
    started = time.perf_counter()
    try:
        response = await client.get(url)
        response.raise_for_status()
        result = {"ok": True, "status": response.status_code, "data": response.json()}
    except httpx.TimeoutException:
        result = {"ok": False, "error": f"timed out after {settings.AGGREGATE_TIMEOUT}s"}
    except httpx.HTTPStatusError as exc:
        result = {"ok": False, "status": exc.response.status_code, "error": f"HTTP {exc.response.status_code}"}
    except httpx.HTTPError as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    except ValueError:
        result = {"ok": False, "error": "response is not JSON"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


@require_GET
async def aggregate(request: HttpRequest) -> JsonResponse:
    """Fetch every configured upstream concurrently; one slow or broken upstream spoils only its own entry."""
    upstreams = settings.AGGREGATE_UPSTREAMS
    async with httpx.AsyncClient(timeout=settings.AGGREGATE_TIMEOUT, follow_redirects=False) as client:
        results = await asyncio.gather(*(_fetch(client, url) for url in upstreams.values()))
    by_name = dict(zip(upstreams, results, strict=True))
    failed = [name for name, r in by_name.items() if not r["ok"]]
    status = 502 if upstreams and len(failed) == len(upstreams) else 200
    return JsonResponse({"complete": not failed, "failed": failed, "upstreams": by_name}, status=status)


def _client_allowed(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, for METRICS_ALLOWED_NETWORKS only."""
    if not _client_allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
