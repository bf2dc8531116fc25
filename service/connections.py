"""The connection level: what one TCP connection, and all of them together, may hold.

uvicorn's httptools protocol bounds the idle time between keep-alive requests
(``timeout_keep_alive``) but nothing before the first request or inside the request headers: a
connection that sends nothing, or a header byte now and then (slowloris), is kept for good, headers
of any size are buffered, and connections are accepted until the process runs out of file
descriptors, after which the event loop's accept path (libuv's EMFILE trick under uvloop) closes
new connections with no answer and no log line. :class:`GuardedHttpProtocol` subclasses that
protocol (the one the service runs, ``http="httptools"``) and adds:

* **Header deadline** (``header_timeout_s``): from a connection's opening, or from the first byte
  of a next request, its headers must be complete within the deadline; otherwise 408 if part of a
  request came, or a plain close for a connection that sent nothing.
* **Header size** (``max_header_bytes``): request line plus headers; beyond it 431. Headers that
  never end are cut off as soon as the bytes received for them pass the limit (when a pipelined
  request began in the middle of a read, that read is not counted: at most one read more).
* **Connection cap** (``max_connections``, per process): a connection beyond it is answered 503
  (``Retry-After``) at once and closed; refusals are logged (one line per second at most, with
  their count). The cap is kept below the open-file limit (:func:`connection_cap`), so the
  process always has descriptors to accept, answer and close with.

* **Early answer**: once a request's headers are complete, the app's registered check
  (:func:`set_early_answer`; the service registers the overload 503 of
  :func:`service.routes.classify.early_overload_answer`) may answer it in place of the app, so a
  refusal costs the event loop no routing, middleware or body read.

* **Shutdown grace** (``shutdown_grace_s``): uvicorn's graceful shutdown closes at once every
  connection with no request in progress, which drops a request that a client has connected for
  and not yet sent (or is still sending the headers of): it meets a closed connection and cannot
  tell whether the server saw it. A connection that has not begun its first request, or is in the
  middle of a request's headers, with no response under way, gets ``shutdown_grace_s`` for its
  request to arrive; the request is answered (503 while draining) with ``Connection: close``;
  headers still unfinished when the grace ends get 503, a silent connection is closed. Idle
  keep-alive connections close at once, as before, and so does a connection whose response is
  under way once that response is sent (a request pipelined behind it is not waited for). The
  grace runs within uvicorn's ``graceful_shutdown_s``, which cuts it short if it is shorter.

Every protocol-level answer (408, 431, the cap's 503) is written with ``Connection: close``; the
connection then *lingers* (its write side shut, whatever arrives read and discarded for
``LINGER_S``), so a client that is still sending reads the answer instead of a reset. At most
``MAX_LINGERING`` connections linger at once; beyond that an answered connection is closed at
once. Each kind of event is counted in :data:`EVENTS` and logged at most once a second with its
count.

h11 (uvicorn's other HTTP/1.1 protocol) is not guarded; the service always runs httptools.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import resource
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import uvicorn
from uvicorn._types import ASGI3Application, HTTPScope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.errors import error_body
from service.settings import Settings

__all__ = ["ConnectionLimits", "ServiceConfig", "GuardedHttpProtocol", "EVENTS", "EVENT_KINDS", "connection_cap",
           "set_early_answer", "EarlyAnswer",
           "raise_open_file_limit", "FD_RESERVE", "LINGER_S", "MAX_LINGERING"]

logger = logging.getLogger(__name__)

LINGER_S = 1.0  # how long an answered connection is read and discarded before it is closed
MAX_LINGERING = 64  # answered connections lingering at once; beyond, an answered connection is closed at once
_MAX_DISCARD = 1 << 20  # bytes discarded while lingering before the connection is closed anyway
# Descriptors the process needs besides its connections: the listener, epoll, eventfds, pipes to
# the supervisor, log and metric files, model files while loading (measured: ~30 when serving).
FD_RESERVE = 64


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection-level limits of one server process (from :class:`Settings`)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 2048
    retry_after_s: int = 1
    # At shutdown: how long an accepted connection whose request has not come yet may take to send it
    # (a client sends its request one round trip after connecting; a preconnecting proxy never does).
    shutdown_grace_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int | None = None) -> ConnectionLimits:
        """The settings' limits; ``max_connections`` overrides the setting (the fd-limited cap)."""
        return cls(settings.header_timeout_s, settings.max_header_bytes,
                   max_connections or settings.max_connections, settings.retry_after_s, settings.shutdown_grace_s)


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (never past the hard limit); the new soft limit.

    Go's runtime does the same at start: the soft limit (often 1024) is a default for old
    ``select()`` programs, while the hard limit is the administrator's bound.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a sandbox that refuses: keep the soft limit
            logger.warning("could not raise the open-file limit", extra={"fields": {"soft": soft, "wanted": target}})
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to what the open-file limit leaves after the reserve and the
    lingering answers (the soft limit is raised first, as far as the hard limit allows).

    Raises:
        ValueError: the open-file limit leaves room for no connection at all.
    """
    soft = raise_open_file_limit(max_connections + FD_RESERVE + MAX_LINGERING)
    cap = min(max_connections, soft - FD_RESERVE - MAX_LINGERING)
    if cap < 1:
        raise ValueError(f"the open-file limit ({soft}) leaves no room for connections "
                         f"(reserve {FD_RESERVE} + {MAX_LINGERING} lingering)")
    if cap < max_connections:
        logger.warning("max_connections lowered to fit the open-file limit", extra={"fields": {
            "max_connections": max_connections, "cap": cap, "open_file_limit": soft}})
    return cap


class ServiceConfig(uvicorn.Config):
    """uvicorn's config, carrying the connection limits to every protocol instance.

    It is pickled to each worker process (``workers > 1``), so the limits travel with it.
    """

    def __init__(self, app: Any, limits: ConnectionLimits, drain_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **kwargs)
        self.connection_limits = limits
        self.drain_s = drain_s  # read by each worker's server (service.supervision.WorkerProcess)


@dataclass
class _Events:
    """Connection-level events of this process: counted, and logged at most once a second per kind."""

    interval_s: float = 1.0
    totals: Counter[str] = field(default_factory=Counter)
    # answered connections still read (insertion order = age) -> whether anything arrived from them
    lingering: dict[GuardedHttpProtocol, bool] = field(default_factory=dict)
    _unlogged: Counter[str] = field(default_factory=Counter)
    _last_logged: dict[str, float] = field(default_factory=dict)
    _flush: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    observer: Callable[[str], None] | None = None  # the app's metric (service.app); called with each event

    _MESSAGES: ClassVar[dict[str, str]] = {
        "refused": "connections refused: over max_connections (answered 503)",
        "refused_at_once": "connections refused and closed at once (too many lingering answers): a client "
        "that had sent its request may see a reset",
        "header_timeout": "requests cut off: headers not complete within header_timeout_s (answered 408)",
        "silent_timeout": "connections closed: nothing sent within header_timeout_s",
        "headers_too_large": "requests refused: headers over max_header_bytes (answered 431)",
        "overloaded": "requests refused before the app: admission budget spent (answered 503)",
        "shutdown_closed": "connections closed at shutdown: no complete request headers within shutdown_grace_s "
        "(answered 503 if part of a request came)",
    }

    def record(self, kind: str, loop: asyncio.AbstractEventLoop, **fields: Any) -> None:
        self.totals[kind] += 1
        if self.observer is not None:
            self.observer(kind)
        self._unlogged[kind] += 1
        now = loop.time()
        if now - self._last_logged.get(kind, -math.inf) >= self.interval_s:
            self._log(kind, now, fields)
        elif kind not in self._flush:  # the rest of a burst is logged when the second is over
            at = self._last_logged[kind] + self.interval_s
            self._flush[kind] = loop.call_at(at, self._log_rest, kind, loop, fields)

    def _log_rest(self, kind: str, loop: asyncio.AbstractEventLoop, fields: dict[str, Any]) -> None:
        self._flush.pop(kind, None)
        if self._unlogged[kind]:
            self._log(kind, loop.time(), fields)

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Log every count not logged yet: at shutdown, the rest of a burst would wait for a timer
        that never fires (the app's lifespan calls this once the connections are closed)."""
        for kind, handle in list(self._flush.items()):
            handle.cancel()
            self._log_rest(kind, loop, {})

    def _log(self, kind: str, now: float, fields: dict[str, Any]) -> None:
        level = logging.INFO if kind == "silent_timeout" else logging.WARNING
        logger.log(level, self._MESSAGES[kind], extra={"fields": {
            "event": kind, "count": self._unlogged[kind], "total": self.totals[kind], **fields}})
        self._unlogged[kind] = 0
        self._last_logged[kind] = now


EVENTS = _Events()  # one per process: a process runs one server
EVENT_KINDS = tuple(_Events._MESSAGES)
# The app's early answer (service.app registers it): given a request's scope once its headers are
# complete, an ASGI app that answers it in place of the service's app, or None (the app answers).
EarlyAnswer = Callable[[HTTPScope], ASGI3Application | None]
_early_answer: list[EarlyAnswer] = []


def set_early_answer(early: EarlyAnswer | None) -> None:
    """Register (None: remove) this process's early answer (service.app: 503 when the budget is spent)."""
    _early_answer[:] = [early] if early is not None else []


def _response(status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]],
              extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A complete ``Connection: close`` response with the service's JSON error envelope."""
    body = json.dumps(error_body(None, status, code, message)).encode()
    head = [STATUS_LINE[status]]
    for name, value in [*default_headers, (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *extra]:
        head += [name, b": ", value, b"\r\n"]
    return b"".join([*head, b"\r\n", body])


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size limit and a connection cap.

    Args: those of :class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`; the limits
    come from ``config.connection_limits`` (:class:`ServiceConfig`), else the defaults.
    """

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "connection_limits", None) or ConnectionLimits()
        self._header_deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False  # a request has begun and its headers are not complete
        self._header_bytes = 0  # bytes of the unfinished headers received so far
        self._message_ended = False  # a request ended within the read being parsed (pipelining)
        self._answered = False  # a protocol-level answer is written: the rest is discarded
        self._discarded = 0
        self._shutting_down = False  # the server's shutdown began while a request was still to come

    # --- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:  # this one was just added
            EVENTS.record("refused", self.loop, max_connections=self.limits.max_connections)
            self._answer(503, "too_many_connections",
                         f"more than {self.limits.max_connections} open connections; retry later",
                         ((b"retry-after", str(self.limits.retry_after_s).encode()),))
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        EVENTS.lingering.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            if self in EVENTS.lingering:
                EVENTS.lingering[self] = True
            self._discarded += len(data)
            if self._discarded > _MAX_DISCARD:
                self.transport.close()
            return
        self._message_ended = False
        super().data_received(data)
        if self._awaiting_headers and not self._answered and not self.transport.is_closing():
            if not self._message_ended:  # every byte of this read belongs to the unfinished headers
                self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._headers_too_large()

    # --- parser callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._answered:
            return
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        if self._header_deadline is None:  # a first request keeps the deadline armed at connect
            self._arm_header_deadline()

    def on_url(self, url: bytes) -> None:
        if not self._answered:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._answered:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._answered:
            return
        self._awaiting_headers = False
        self._cancel_header_deadline()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._headers_too_large()
            return
        super().on_headers_complete()
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_body(self, body: bytes) -> None:
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_ended = True
        if not self._answered:
            super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Decided when the request starts (a pipelined one waits for the one before it): the
        # early answer sees the admission budget as it is now.
        for early in _early_answer:
            app = early(cycle.scope) or app
        super()._start_asgi_task(cycle, app)

    # --- shutdown ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, except for a request still to come (module docstring)."""
        # (A connection answered at the connection level is no longer among the server's connections:
        # it is not asked; it lingers, or the process's exit closes it.)
        # No request has reached its headers' end yet (cycle None: none has begun, or one is in its
        # headers), or a next request is in its headers while no response is under way.
        request_to_come = self.cycle is None or (self.cycle.response_complete and self._awaiting_headers)
        if not request_to_come or self.transport.is_closing() or self.limits.shutdown_grace_s <= 0:
            super().shutdown()  # idle keep-alive: closed; a response under way: sent, then closed
            return
        self._shutting_down = True
        self.loop.call_later(self.limits.shutdown_grace_s, self._shutdown_grace_over)

    def _shutdown_grace_over(self) -> None:
        if self._answered or self.transport.is_closing() or (
                self.cycle is not None and not self.cycle.response_complete):
            return  # answered or closed already, or its request came and is being answered (then closed)
        EVENTS.record("shutdown_closed", self.loop, shutdown_grace_s=self.limits.shutdown_grace_s)
        if self._awaiting_headers:  # part of a request came: it is told, not dropped
            self._answer(503, "not_ready", "the service is shutting down; retry on another instance",
                         ((b"retry-after", str(self.limits.retry_after_s).encode()),))
            return
        self.connections.discard(self)
        self.transport.close()

    # --- the limits --------------------------------------------------------------------------------
    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timeout(self) -> None:
        self._header_deadline = None
        if self._answered or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request waits for the one before it: the server is the slow party
            self._arm_header_deadline()
            return
        if self._awaiting_headers:
            EVENTS.record("header_timeout", self.loop, header_timeout_s=self.limits.header_timeout_s)
            self._answer(408, "request_timeout",
                         f"request headers not complete within {self.limits.header_timeout_s} s")
        else:
            EVENTS.record("silent_timeout", self.loop, header_timeout_s=self.limits.header_timeout_s)
            self.connections.discard(self)
            self.transport.close()

    def _headers_too_large(self) -> None:
        EVENTS.record("headers_too_large", self.loop, max_header_bytes=self.limits.max_header_bytes)
        self._answer(431, "headers_too_large",
                     f"request line and headers exceed the limit of {self.limits.max_header_bytes} bytes")

    def _answer(self, status: int, code: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Write a protocol-level answer, then linger (or close at once when too many linger)."""
        sent_any = self._awaiting_headers or self.cycle is not None
        self._answered = True
        self._awaiting_headers = False
        self._cancel_header_deadline()
        self._unset_keepalive_if_required()
        self.connections.discard(self)  # on its way out: no longer counted against the cap
        self.transport.write(_response(status, code, message, self.server_state.default_headers, extra))
        if len(EVENTS.lingering) >= MAX_LINGERING:
            # make room by closing the oldest lingering connection that never sent a byte (nothing of
            # it can be unread, so it gets no reset), else close this one at once
            silent = next((p for p, sent in EVENTS.lingering.items() if not sent), None)
            if silent is not None:
                EVENTS.lingering.pop(silent)
                silent.transport.close()
        if len(EVENTS.lingering) >= MAX_LINGERING or not self.transport.can_write_eof():
            if status == 503:
                EVENTS.record("refused_at_once", self.loop, max_lingering=MAX_LINGERING)
            self.transport.close()
            return
        EVENTS.lingering[self] = sent_any
        self.transport.write_eof()  # the answer, then FIN; reading goes on, so unread data causes no reset
        if self.flow is not None:
            self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)
