"""ASGI middleware: the request body size limit (enforced before and while the body is read)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLargeError, error_response

__all__ = ["BodySizeLimitMiddleware"]


class BodySizeLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is answered at once, without reading the body;
    a chunked body is counted as it streams, and the read fails with :class:`PayloadTooLargeError`
    (turned into the same 413 by the error handlers) as soon as it passes the limit.

    Args:
        app: the wrapped ASGI app.
        max_bytes: the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            request_id = scope.get("state", {}).get("request_id")
            response = error_response(request_id, 413, "payload_too_large", self._too_large(declared.decode()))
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLargeError(self._too_large(f"more than {self.max_bytes}"))
            return message

        await self.app(scope, counting_receive, send)
