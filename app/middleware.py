"""Pure ASGI middleware: request ids, one log line and metrics per request, body limits
in size and time.

Pure ASGI (not BaseHTTPMiddleware) so that streamed responses, such as job results,
stay streamed, and request bodies are counted chunk by chunk as they arrive.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics
from core.logging import get_logger, log_event

log = get_logger("http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestObserver:
    """Gives every request an id (X-Request-ID, echoed back), then logs it and counts it.

    The log line holds the method, route template, status, duration and the caller's
    hashed id; never headers, query values or bodies.
    """

    def __init__(self, app: ASGIApp, static_prefix: str = "/static-offline-docs") -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope["request_id"] = request_id
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = self._route(scope)
            metrics.observe_request(scope["method"], route, status, seconds)
            log_event(
                log,
                "request",
                method=scope["method"],
                route=route,
                status=status,
                ms=round(seconds * 1000, 2),
                request_id=request_id,
                caller=scope.get("state", {}).get("caller"),
            )

    def _route(self, scope: Scope) -> str:
        # every offline docs asset under one label, the patched ReDoc bundle (a route of
        # its own) included
        if scope["path"].startswith(self.static_prefix):
            return self.static_prefix
        route = getattr(scope.get("route"), "path", None)
        return route or metrics.UNMATCHED_ROUTE


class BodyTooLarge(HTTPException):
    """Raised from `receive` while a body streams in; the app's handler for HTTPException
    turns it into the usual 413 error shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised from `receive` when the client has kept the server waiting for its body too
    long; answered 408 body_timeout, and the connection is closed."""

    def __init__(self, timeout_s: float, received: int) -> None:
        super().__init__(
            408,
            f"the request body stalled: no complete body after waiting {timeout_s:g} s for the client "
            f"({received} bytes received)",
            headers={"Connection": "close"},
        )


class BodyLimit:
    """Caps request bodies per path in size and in time, without ever holding more than
    the cap in memory.

    A Content-Length above the cap is refused before the app runs; a body without one
    (chunked) or one that lies is cut off as soon as the bytes received pass the cap.
    The time is what `receive` spends waiting for the client, summed over the body: a
    body that trickles in (or never ends) is cut after `timeout_s` of waiting, while the
    time the app spends working on what it received does not count.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int | None], timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_too_large(send, limit, int(declared))
            return
        received = 0
        waited = 0.0
        complete = False

        async def receive_guarded() -> Message:
            nonlocal received, waited, complete
            if complete:  # after the body, `receive` only waits for a disconnect: no deadline
                return await receive()
            started = time.monotonic()
            try:
                with anyio.fail_after(max(0.0, self.timeout_s - waited)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout_s, received) from None
            waited += time.monotonic() - started
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, receive_guarded, send)


async def _send_too_large(send: Send, limit: int, declared: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"request body is larger than {limit} bytes",
                "details": {"max_bytes": limit, "content_length": declared},
            }
        }
    ).encode()
    # Connection: close, because the unread body is still on the wire
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
