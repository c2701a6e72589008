"""`Idempotency-Key` as Codat documents it (`docs/using-the-api/write-data/idempotency.md`).

"Codat will cache the initial response and will use it on all following requests with the same
`Idempotency-Key` header. This cache lasts 90 minutes." Every answer is cached — deterministic 4xx
(400, 409, 422) and 5xx alike — except `429`: Codat "discards the response and releases the key", so a
retry after `Retry-After` with the same key is a fresh attempt. The same key with another body → `422`;
a key whose request is still in progress → `409`.

An answer may be cached before it is sent (`ready_at`): a request the sandbox holds (an injected hang)
keeps its key in progress until then, whether or not its client waited for it, as a server would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

TTL_S = 90 * 60
NOT_CACHED = frozenset({429})


@dataclass(frozen=True)
class CachedAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Entry:
    fingerprint: str
    started: float
    answer: CachedAnswer | None = None
    ready_at: float = 0.0


class IdempotencyStore:
    """Outcomes of `begin`: a CachedAnswer to replay, "started", "in_flight" or "mismatch"."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @staticmethod
    def fingerprint(method: str, path: str, body: bytes) -> str:
        return hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()

    def begin(self, key: str, fingerprint: str, now: float) -> CachedAnswer | str:
        entry = self._entries.get(key)
        if entry is not None and now - entry.started > TTL_S:
            entry = None
        if entry is None:
            self._entries[key] = _Entry(fingerprint, now)
            return "started"
        if entry.fingerprint != fingerprint:
            return "mismatch"
        if entry.answer is None or now < entry.ready_at:
            return "in_flight"
        return entry.answer

    def finish(self, key: str, answer: CachedAnswer, *, ready_at: float = 0.0) -> None:
        """Cache the answer to the key's request (a 429 releases the key instead)."""
        if answer.status in NOT_CACHED:
            self.release(key)
            return
        entry = self._entries.get(key)
        if entry is not None:
            entry.answer, entry.ready_at = answer, ready_at

    def release(self, key: str) -> None:
        """Forget a key whose request got no answer worth replaying (a 429, or the sandbox failed)."""
        self._entries.pop(key, None)
