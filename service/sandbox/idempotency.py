"""`Idempotency-Key` as Codat documents it: answers (5xx too, not 429) cached 90 minutes; other body → 422;
in flight → 409 (docs/using-the-api/write-data/idempotency.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

TTL_S = 90 * 60


@dataclass(frozen=True)
class CachedAnswer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Entry:
    fingerprint: str
    started: float
    answer: CachedAnswer | None = None


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
        if entry.answer is None:
            return "in_flight"
        return entry.answer

    def finish(self, key: str, answer: CachedAnswer) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.answer = answer

    def abandon(self, key: str) -> None:
        """Forget a key whose request got no answer, or a 429: Codat releases it for the retry."""
        self._entries.pop(key, None)
