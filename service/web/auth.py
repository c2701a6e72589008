"""Bearer tokens for every non-webhook endpoint, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from service.errors import AuthenticationFailed, MissingAuthentication
from service.web.throttle import FailureThrottle

Endpoint = Callable[[Request], Awaitable[Response]]


class InvalidToken(AuthenticationFailed):
    code = "invalid_token"


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def throttled(request: Request) -> tuple[FailureThrottle | None, str, float]:
    """The app's failure throttle (None in an app built without one), the client's address, and now."""
    throttle: FailureThrottle | None = getattr(request.app.state, "auth_throttle", None)
    runtime = getattr(request.app.state, "runtime", None)
    now = runtime.clock.now() if runtime is not None else 0.0
    return throttle, client_address(request), now


def check_bearer(request: Request, expected: SecretStr | None) -> None:
    header = request.headers.get("authorization")
    if header is None:
        raise MissingAuthentication()
    throttle, client, now = throttled(request)
    if throttle is not None:
        throttle.check(client, now)  # 429 while this address has used up its failures
    scheme, _, token = header.partition(" ")
    # An unset or empty token refuses everything: an endpoint is never open because configuration is
    # missing (settings refuse an empty token too; this holds for `Settings` built any other way).
    want = "" if expected is None else expected.get_secret_value()
    if not want or scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), want.encode()):
        if throttle is not None:
            throttle.failed(client, now)
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
