"""The id rule: one check of every id codat-relay takes from outside, and one way to put an id in a URL.

Companies, alerts, datasets and records are keyed by VARCHAR(255), PostgreSQL refuses a NUL in any
text, and ids travel in URL paths (ours and Codat's). So an id is at most 255 characters, is not `.`
or `..` (a path segment that means "here" or "up": `/data/companies/../sync/…` is another URL), holds
no control character (a newline cannot be routed back to, nor logged on one line) and was valid UTF-8
(undecodable bytes all become U+FFFD, so different ids would collide).

In a path, an id longer than any stored one names nothing that can exist: 404, like any unknown id. An
id the rule refuses is invalid input: 422 saying why. As a query filter, both are a 422 naming the
parameter. Where the relay builds a URL, every id is one path segment, encoded by `path_segment`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes

from service.errors import InvalidRequest, NotFound

if TYPE_CHECKING:  # typing only: the rule itself is the core's, the web layer hands in its requests
    from starlette.requests import Request

MAX_ID_CHARS = 255  # the width of companies.id and alerts.id (service/db.py)
DOT_SEGMENTS = frozenset({".", ".."})
RULE = f"an id has 1 to {MAX_ID_CHARS} characters, is not . or .., and holds no control character"
# Unicode's control characters (category Cc), which are exactly these and will stay so (the category is
# closed). One regex search in C: per character `unicodedata.category` cost ~150 calls a delivery.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def id_problem(value: str) -> str | None:
    """Why `value` cannot be an id (the rule's characters, not its length); None when it can."""
    if value in DOT_SEGMENTS:
        return "may not be . or .. (they change the meaning of a URL path)"
    if "\ufffd" in value:
        return "must be valid UTF-8"
    if _CONTROL.search(value) is not None:
        return "may not hold control characters (NUL, line breaks, tabs, …)"
    return None


def check_id(value: str, field: str, max_chars: int = MAX_ID_CHARS) -> str:
    """`value` if it is an id; else InvalidRequest (422) whose detail starts with `field`."""
    if not value or len(value) > max_chars:
        raise InvalidRequest(f"{field}: 1 to {max_chars} characters")
    if (problem := id_problem(value)) is not None:
        raise InvalidRequest(f"{field}: {problem}")
    return value


def could_exist(value: str, max_chars: int = MAX_ID_CHARS) -> bool:
    """Whether `value` could be a stored key of `max_chars`: not longer, and allowed by the id rule."""
    return len(value) <= max_chars and id_problem(value) is None


def path_segment(value: str) -> str:
    """`value` as exactly one URL path segment: `/`, `?`, `#`, `%` encoded, and `.`/`..` as `%2E`."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if value in DOT_SEGMENTS else encoded


def _decodes(raw: bytes) -> bool:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def path_id(request: Request, name: str, what: str) -> str:
    """The path parameter `name`: InvalidRequest when the id rule refuses it, NotFound when too long."""
    value = str(request.path_params[name])
    if not _decodes(request.scope.get("raw_path") or b""):  # the server decoded it with U+FFFD
        raise InvalidRequest(f"{what} id: must be valid UTF-8")
    if (problem := id_problem(value)) is not None:
        raise InvalidRequest(f"{what} id: {problem}")  # not echoed: it is not an id
    if len(value) > MAX_ID_CHARS:
        raise NotFound(f"no such {what}: an id has at most {MAX_ID_CHARS} characters")
    return value


def query_id(request: Request, name: str, max_chars: int = MAX_ID_CHARS) -> str | None:
    """The query parameter `name` (None when absent or empty); InvalidRequest when no stored value could match."""
    if not _decodes(bytes(request.scope.get("query_string") or b"").replace(b"+", b" ")):
        raise InvalidRequest(f"{name}: must be valid UTF-8")
    value = request.query_params.get(name) or None
    if value is not None:
        check_id(value, name, max_chars)
    return value
