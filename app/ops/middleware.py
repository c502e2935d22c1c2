"""HTTP request metrics by view, method and status, for sync (gunicorn) and async (daphne) stacks."""

import time

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware

from ops.metrics import HTTP_LATENCY, HTTP_REQUESTS


def _observe(request, response, started: float) -> None:
    match = getattr(request, "resolver_match", None)
    # The view's name, never the raw path: label values stay few.
    view = match.view_name if match else "unmatched"
    HTTP_REQUESTS.labels(view, request.method, str(response.status_code)).inc()
    HTTP_LATENCY.labels(view, request.method).observe(time.perf_counter() - started)


@sync_and_async_middleware
def http_metrics(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request):
            started = time.perf_counter()
            response = await get_response(request)
            _observe(request, response, started)
            return response

    else:

        def middleware(request):
            started = time.perf_counter()
            response = get_response(request)
            _observe(request, response, started)
            return response

    return middleware
