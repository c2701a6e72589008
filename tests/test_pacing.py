"""Codat calls paced to the rate limit: a slot every 60/rate seconds after a burst, in arrival order."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.codat.client import CodatClient
from service.codat.pacing import Pacer
from tests.conftest import make_settings


class FakeTime:
    """A monotonic clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.mark.parametrize(("per_minute", "burst", "requests", "waits"), [
    (0, 10, 5, [0.0] * 5),                                 # unpaced
    (600, 1, 4, [0.0, 0.1, 0.2, 0.3]),                     # one slot every 0.1 s
    (600, 3, 5, [0.0, 0.0, 0.0, 0.1, 0.2]),                # a burst of 3, then the rate
    (1000, 10, 12, [0.0] * 10 + [0.06, 0.12]),             # Codat's 1,000 a minute, 10 at once
])  # fmt: skip
async def test_waits_follow_the_rate_after_the_burst(per_minute: int, burst: int, requests: int,
                                                    waits: list[float]) -> None:
    """Requests at one instant wait for their slots: none within the burst, then one every 60/rate s."""
    time = FakeTime()
    pacer = Pacer(per_minute, burst, monotonic=time.monotonic, sleep=time.sleep)
    got = [await pacer.wait() for _ in range(requests)]
    assert got == pytest.approx(waits)


async def test_time_passing_frees_slots() -> None:
    """A request after a quiet spell does not wait for the slots the quiet spell left unused."""
    time = FakeTime()
    pacer = Pacer(60, 1, monotonic=time.monotonic, sleep=time.sleep)
    assert await pacer.wait() == 0.0
    time.now += 5.0
    assert await pacer.wait() == 0.0
    assert await pacer.wait() == pytest.approx(1.0)


async def test_the_client_paces_every_request_from_settings() -> None:
    """RELAY_CODAT_REQUESTS_PER_MINUTE reaches the client: three quick requests at 600/min with a burst
    of one take at least 0.2 s of real time between the first and the last."""
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(asyncio.get_running_loop().time())
        return httpx.Response(200, json={"id": "ds", "status": "Processing", "companyId": "c", "dataType": "x"})

    settings = make_settings(codat_requests_per_minute=600, codat_concurrency=1)
    async with CodatClient.from_settings(settings, transport=httpx.MockTransport(answer)) as client:
        await asyncio.gather(*(client.get_dataset("c", "ds") for _ in range(3)))
    assert len(sent) == 3 and sent[-1] - sent[0] >= 0.19
