"""Ids taken from URLs: one check of whether a value could name a stored company or alert at all.

Companies and alerts are keyed by VARCHAR(255), and PostgreSQL refuses a NUL in any text, so such a
value made the query fail (a 500) instead of match nothing. In a path it names nothing that can exist:
404, like any unknown id. As a query filter it is an invalid value: 422 naming the parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import InvalidRequest, NotFound

if TYPE_CHECKING:  # typing only: the rule itself is the core's, the web layer hands in its requests
    from starlette.requests import Request

MAX_ID_CHARS = 255  # the width of companies.id and alerts.id (service/db.py)


def could_exist(value: str, max_chars: int = MAX_ID_CHARS) -> bool:
    """Whether `value` fits a key column of `max_chars`: not longer, and no NUL (PostgreSQL text holds none)."""
    return len(value) <= max_chars and "\x00" not in value


def path_id(request: Request, name: str, what: str) -> str:
    """The path parameter `name`; NotFound when it could not name any stored `what`."""
    value = str(request.path_params[name])
    if not could_exist(value):
        # Not echoed: it is long or holds a NUL, and either way it is not an id.
        raise NotFound(f"no such {what}: an id has at most {MAX_ID_CHARS} characters and no NUL")
    return value


def query_id(request: Request, name: str, max_chars: int = MAX_ID_CHARS) -> str | None:
    """The query parameter `name` (None when absent or empty); InvalidRequest when no stored value could match."""
    value = request.query_params.get(name) or None
    if value is not None and not could_exist(value, max_chars):
        raise InvalidRequest(f"{name}: at most {max_chars} characters, and no NUL")
    return value
