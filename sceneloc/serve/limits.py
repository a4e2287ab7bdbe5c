"""What keeps one client from hurting the others: the request body's size and reading time, a per-client request
rate, and connections whose headers never arrive.

RequestLimits is pure ASGI middleware (outside FastAPI, so it answers before any route or body parsing);
GuardedH11Protocol is uvicorn's h11 protocol with a header deadline, which uvicorn lacks (it times out idle
keep-alive connections, not a request whose headers trickle in a byte at a time: the slow-loris attack)."""

from __future__ import annotations

import asyncio
import json
import time

from uvicorn.protocols.http.h11_impl import H11Protocol


class BodyTooLarge(Exception):
    """The request body passed max_body_bytes while it was being read."""


class BodyTimeout(Exception):
    """The request body was not complete within the request timeout."""


class RateLimiter:
    """A token bucket per client address: `burst` requests at once, then `rate_per_s` on average."""

    def __init__(self, rate_per_s: float, burst: int):
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        """client -> (tokens left, time.monotonic() of the last update)."""
        self._pruned = float("-inf")

    def retry_after(self, client: str) -> float:
        """0 when `client` may make a request now (and it is counted), else the seconds until it may."""
        now = time.monotonic()
        tokens, then = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if len(self._buckets) > 10_000 and now - self._pruned > 1.0:
            # Forget the clients whose buckets are full again (at most once a second: the scan costs).
            full_after = self.burst / self.rate
            self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < full_after}
            self._pruned = now
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0


class RequestLimits:
    """ASGI middleware: 429 past the client's rate (HTTP and WebSocket handshakes), 413 for a body over
    `max_body_bytes` (from Content-Length before reading, or while reading a chunked one), and a `receive` that
    raises BodyTooLarge / BodyTimeout, which the routes turn into 413 / 408. `on_reject(reason)` counts refusals;
    `on_done(scope, status, seconds)` every answered HTTP request."""

    def __init__(self, app, max_body_bytes: int, timeout_s: float, limiter: RateLimiter, on_reject, on_done):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.limiter = limiter
        self.on_reject = on_reject
        self.on_done = on_done

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.limiter.retry_after(client)
        if wait > 0:
            self.on_reject("rate_limited")
            # A WebSocket handshake gets the same 429 (ASGI's denial response; a close before accepting would be 403).
            return await _refuse(send, 429, f"rate limit: over {self.limiter.rate:g} requests/s from {client}",
                                 {"retry-after": str(max(1, round(wait)))},
                                 "websocket.http.response" if scope["type"] == "websocket" else "http.response")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            self.on_reject("too_large")
            await _refuse(send_and_count, 413, f"request body over the limit of {self.max_body_bytes:,} bytes")
        else:
            await self.app(scope, self._limited(receive), send_and_count)
        self.on_done(scope, status[0], time.perf_counter() - start)

    def _limited(self, receive):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0

        async def limited_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(1e-3, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        return limited_receive


async def _refuse(send, status: int, message: str, headers: dict[str, str] | None = None,
                  kind: str = "http.response") -> None:
    """A JSON error reply {"error": message} sent straight through ASGI, closing the connection (the client may
    still be sending a body nobody will read). kind: "websocket.http.response" refuses a WebSocket handshake."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": f"{kind}.start", "status": status, "headers": raw})
    await send({"type": f"{kind}.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus: a connection that has started a request (sent a byte of it) without completing
    its headers within header_timeout_s of opening, or of its last reply, gets 408 and is closed; one that has sent
    nothing is closed silently (uvicorn's keep-alive timeout usually closes it first)."""

    header_timeout_s = 10.0
    """Set per server by sceneloc.serve.server (uvicorn builds protocols from the class)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()  # may start the next pipelined request, with a cycle of its own
        if self.cycle is finished:
            self._arm_header_timer()

    def handle_websocket_upgrade(self, event) -> None:
        self._cancel_header_timer()  # the WebSocket protocol owns the connection from here
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._bytes_since_armed = False
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue, self.cycle)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self, cycle_when_armed) -> None:
        self._header_timer = None
        # A request whose headers arrived since the timer was armed has a cycle of its own: it is being served.
        if self.cycle is not cycle_when_armed or self.transport.is_closing():
            return
        if self._bytes_since_armed:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: 43\r\nconnection: close\r\n\r\n"
                                 b'{"error": "request headers not received"}\r\n')
        self.transport.close()
