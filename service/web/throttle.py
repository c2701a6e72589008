"""Throttling of failed authentication, per client address: token guessing gets `429` + `Retry-After`.

Each address may fail `limit` times per window (a wrong bearer token, a wrong token at `/ui/login`);
after that every authentication attempt from it — right token or not, so the answer tells a guesser
nothing — is a 429 until its window ends. Successful requests cost one dict lookup; the webhook
endpoint, whose senders authenticate by signature, is not throttled. Per process and in memory: a
restart forgets, which only lets a guesser start again at `limit` guesses per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.errors import Rejected

MAX_TRACKED_CLIENTS = 10_000  # the oldest windows are forgotten first: memory stays bounded under a spray


class TooManyAttempts(Rejected):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed authentication attempts from this address: retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


@dataclass
class _Window:
    started: float
    failures: int


class FailureThrottle:
    def __init__(self, limit: int, window_s: float, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self._limit, self._window_s, self._max_clients = limit, window_s, max_clients
        self._windows: dict[str, _Window] = {}

    def check(self, client: str, now: float) -> None:
        """TooManyAttempts while `client` has used up its failures in its current window."""
        window = self._windows.get(client)
        if window is None:
            return
        ends = window.started + self._window_s
        if now >= ends:
            del self._windows[client]
        elif window.failures >= self._limit:
            raise TooManyAttempts(max(1, math.ceil(ends - now)))

    def failed(self, client: str, now: float) -> None:
        window = self._windows.get(client)
        if window is None or now >= window.started + self._window_s:
            if len(self._windows) >= self._max_clients:
                del self._windows[next(iter(self._windows))]
            self._windows.pop(client, None)
            window = self._windows[client] = _Window(now, 0)
        window.failures += 1
