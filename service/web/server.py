"""The HTTP server's limits, in one place for `serve`, `web` and `worker`: what a client may hold before
it has authenticated.

uvicorn's httptools protocol buffers a header line whole however long it is, counts no headers, and
arms no timer until a first response is sent: 4 connections sending 1 MiB header lines held 612 MiB,
a request with 128 MiB of headers was served, and connections sending a byte every 3 s were never
closed. `limited_protocol` bounds each of those where the bytes arrive, so that codat-relay can face
the internet without a reverse proxy in front:

- the request line and headers together: at most `max_header_bytes` and `max_headers` lines, else 431;
- the request line and headers must arrive within `header_timeout_seconds` of the request's first byte
  (or of the connection opening), else 408 and the connection is closed;
- the body must arrive within `body_timeout_seconds` of the headers, else the connection is closed
  (the endpoint sees a client that hung up);
- an idle keep-alive connection is closed after `keepalive_seconds`; past `max_connections` open
  connections, requests are answered 503 (uvicorn's `limit_concurrency`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

log = structlog.get_logger("service.web.server")


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout_seconds,
                   settings.body_timeout_seconds)  # fmt: skip


class _HeadersTooLarge(Exception):
    """Raised inside the parser's callback to stop it; answered 431."""


def _answer(status: int, reason: str) -> bytes:
    text = reason.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(text)}\r\nconnection: close\r\n\r\n").encode() + text  # fmt: skip


TOO_LARGE = _answer(431, "Request Header Fields Too Large")
TOO_SLOW = _answer(408, "Request Timeout")
# After refusing, the rest of what the client is still sending is read and dropped for this long before
# closing: closing on unread bytes makes the kernel send a reset, and the client would never read the 431.
LINGER_S = 2.0


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol with the limits above; `limits` is set on the subclass `limited_protocol` makes."""

    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True
        self._header_bytes = 0
        self._header_lines = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # -- the deadline of whatever is being read -----------------------------------------------------

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.info("request_timeout", phase=phase, client=self.client[0] if self.client else None)
        if phase == "headers":
            self.transport.write(TOO_SLOW)
        self.transport.close()  # a body cut short reaches the endpoint as a client that hung up

    def _refuse_headers(self) -> None:
        log.info("request_headers_too_large", client=self.client[0] if self.client else None)
        self._refused = True
        self.transport.write(TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._disarm()
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, "headers")  # a silent connection is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return  # dropped, never buffered: the answer is on its way and the connection closes soon
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._refuse_headers()
                return
            self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # A header line still arriving is buffered whole by the parser, before any callback sees it.
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()

    def _bad_request(self) -> None:
        self._disarm()
        self.send_400_response("Invalid HTTP request received.")

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes, self._header_lines = True, 0, 0
        self._arm(self.limits.header_timeout_s, "headers")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        if self._header_lines > self.limits.max_headers:
            raise _HeadersTooLarge()
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        # Headers that arrive in one read are seen here, not by `data_received`'s running count.
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.limits.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def limited_protocol(limits: Limits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, carrying these limits."""
    return type("RelayHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def server_config(app: Starlette, settings: Settings, **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration of every codat-relay process that serves HTTP."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=limited_protocol(Limits.from_settings(settings)),
        timeout_keep_alive=int(settings.keepalive_seconds),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        **extra,
    )
