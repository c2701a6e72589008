"""Bearer tokens for every non-webhook endpoint, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from service.errors import AuthenticationFailed, MissingAuthentication

Endpoint = Callable[[Request], Awaitable[Response]]


class InvalidToken(AuthenticationFailed):
    code = "invalid_token"


def check_bearer(request: Request, expected: SecretStr | None) -> None:
    header = request.headers.get("authorization")
    if header is None:
        raise MissingAuthentication()
    scheme, _, token = header.partition(" ")
    # An unset or empty token refuses everything: an endpoint is never open because configuration is
    # missing (settings refuse an empty token too; this holds for `Settings` built any other way).
    want = "" if expected is None else expected.get_secret_value()
    if not want or scheme.lower() != "bearer":
        raise InvalidToken()
    if not hmac.compare_digest(token.strip().encode(), want.encode()):
        raise InvalidToken()


def require(role: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint: `role` is `admin` or `api` (the settings token it must carry)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @wraps(endpoint)
        async def guarded(request: Request) -> Response:
            check_bearer(request, getattr(request.app.state.settings, f"{role}_token"))
            return await endpoint(request)

        return guarded

    return decorate
