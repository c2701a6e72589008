"""JSON answers encoded with orjson (the webhook path answers thousands of these a second)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def error_response(code: str, status_code: int, detail: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": code}
    if detail:
        body["detail"] = detail
    return json_response(body, status_code, headers)
