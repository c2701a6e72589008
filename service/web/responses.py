"""JSON answers encoded with orjson (the webhook path answers thousands of these a second)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from service.errors import Rejected, RetryLater


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def error_response(code: str, status_code: int, detail: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": code}
    if detail:
        body["detail"] = detail
    return json_response(body, status_code, headers)


def rejected_response(exc: Rejected) -> Response:
    """A 4xx a retry can never fix: its code, its detail when it says more, its headers (a 429's Retry-After)."""
    headers = getattr(exc, "headers", None)
    return error_response(exc.code, exc.status_code, exc.detail if exc.detail != exc.code else None, headers)


def retry_later_response(exc: RetryLater) -> Response:
    return error_response("unavailable", 503, headers={"Retry-After": str(exc.after_s)})
