"""ASGI middleware: per-request telemetry, and the request body's limits.

:class:`RequestTelemetryMiddleware` (outermost) gives each request its id (``X-Request-ID``), records
its latency and status in :mod:`service.metrics` and writes its access log line.

:class:`BodyLimitsMiddleware` enforces the request body's limits while the body is received. Three
bounds, all checked in the ASGI ``receive`` the app reads its body through, so they hold whatever
route reads a body and however it reads it (multipart streaming, JSON bytes):

* **size** (``max_body_bytes``, 413): a declared ``Content-Length`` over the limit is answered at
  once, without reading the body; a chunked body is counted as it streams.
* **time** (``body_read_timeout_s``, 408): the whole body must have arrived within that time of
  the request's arrival. A client that trickles its body (1 byte/s) gets 408 and its connection is
  closed. Nothing else is held meanwhile: admission (``service.batcher``) happens only once the
  body is in, so slow senders hold none of the in-flight image budget.
* **memory** (``max_body_bytes_in_flight``, 503): the bytes of request bodies held at once, over
  all requests, from the chunk's arrival until its request ends. Only bytes received count (never a
  declared length), so a slow sender holds only what it has sent.

An error answered before the body is complete and that is not the body's own size (408, 503)
carries ``Connection: close``: the rest of the body is never read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTimeoutError, OverloadedError, PayloadTooLargeError, error_response
from service.metrics import ServiceMetrics

__all__ = ["BodyBudget", "BodyLimitsMiddleware", "RequestTelemetryMiddleware", "request_id_of"]

access_logger = logging.getLogger("deltagate.access")

_CLOSE = {"Connection": "close"}
_PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class BodyBudget:
    """Bytes of request bodies held at once (one per process; the event loop is its only user).

    Args:
        limit: the most bytes held at once.
        on_change: called with the bytes held whenever they change (the metrics gauge).
    """

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._on_change = on_change or (lambda held: None)

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes if they fit; False (nothing taken) if not."""
        if self.held + n > self.limit:
            return False
        if n:
            self.held += n
            self._on_change(self.held)
        return True

    def give(self, n: int) -> None:
        if n:
            self.held -= n
            self._on_change(self.held)


class BodyLimitsMiddleware:
    """Refuse bodies that are too large (413), too slow (408) or do not fit in memory now (503).

    Args:
        app: the wrapped ASGI app.
        max_bytes: the body size limit.
        timeout_s: the time from the request's arrival by which its whole body must be received.
        budget: the bytes of bodies held at once, shared by every request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, budget: BodyBudget) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.budget = budget

    def _too_large(self, size: str) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            request_id = scope.get("state", {}).get("request_id")
            response = error_response(request_id, 413, "payload_too_large", self._too_large(declared.decode()),
                                      path=scope["path"])
            await response(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        started = time.monotonic()
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(
                    f"the request body was not received within {self.timeout_s:g} s "
                    f"({received} bytes in {time.monotonic() - started:.1f} s)", headers=dict(_CLOSE),
                ) from None
            if message["type"] != "http.request":
                return message
            chunk = len(message.get("body", b""))
            if received + chunk > self.max_bytes:
                raise PayloadTooLargeError(self._too_large(f"more than {self.max_bytes}"))
            if not self.budget.take(chunk):
                raise OverloadedError(
                    f"overloaded: request bodies in memory would pass the limit of {self.budget.limit} bytes; "
                    "retry later", headers=dict(_CLOSE),
                )
            received += chunk
            complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.budget.give(received)


_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def request_id_of(scope: Scope) -> str:
    """The request's id: its ``X-Request-ID`` when well-formed, else a new one."""
    incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
    return incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex


class RequestTelemetryMiddleware:
    """Per request: a request id (``X-Request-ID``), latency and status metrics, one JSON log line.

    Routes add fields to the log line through ``request.state.log_fields`` (a dict). Only metadata
    is logged: never headers (API key), never bodies (image bytes). The route label is the matched
    path template, so metric cardinality stays bounded.

    Args:
        app: the wrapped ASGI app.
        metrics: where to record.
        known_paths: the app's route paths, to label requests answered before routing (e.g. an
            early 413) by their path rather than "unmatched".
        known_prefixes: mounted folders (the API docs' assets): a file under one is labelled by the folder.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, known_paths: frozenset[str] = frozenset(),
                 known_prefixes: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths
        self.known_prefixes = known_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        state = scope.setdefault("state", {})
        state["request_id"], state["log_fields"] = request_id, {}
        state["started_at"] = time.monotonic()  # the request's deadline counts from here
        status = 500  # if the app fails before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - start)

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None)
        if route is None:
            path = scope["path"]
            mounted = (p for p in self.known_prefixes if path.startswith(p + "/"))
            route = path if path in self.known_paths else next(mounted, "unmatched")
        self.metrics.observe_request(route, scope["method"], status, seconds)
        fields = {"request_id": request_id, "method": scope["method"], "route": route, "status": status,
                  "latency_ms": round(seconds * 1000.0, 2), **scope["state"].get("log_fields", {})}
        level = logging.DEBUG if route in _PROBE_ROUTES else logging.INFO
        access_logger.log(level, "request", extra={"fields": fields})
