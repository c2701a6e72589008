"""The server's limits against a real `codat-relay serve` on loopback, before any authentication.

Issue 16's reproductions: connections sending 1 MiB header lines (RSS went 92 → 612 MiB and stayed),
one request with huge headers (answered 200), connections sending one byte every 3 s (never closed).
Now: headers over RELAY_MAX_HEADER_BYTES or RELAY_MAX_HEADERS get 431 and the connection is closed,
headers or bodies slower than their timeouts are cut off, and the process's RSS stays bounded under the
flood (the figure goes to .bench/reliability-header-flood-*.json). Every load here is bounded in
count and time and stops by itself; the fast form runs in `make test`, the full sizes in `make
reliability`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.integration.harness import free_port, relay_env, stop
from tests.reliability.common import FULL, report, start_relay, wait_healthy

MIB = 1024 * 1024
HEADER_TIMEOUT_S = 2.0  # RELAY_HEADER_TIMEOUT_SECONDS for these processes: short, so the tests are
BODY_TIMEOUT_S = 3.0
# Full size is the issue's: 4 connections x 128 header lines of 1 MiB, 20 slow connections at 3 s a byte.
FLOOD_CONNECTIONS, FLOOD_LINES = (4, 128) if FULL else (4, 16)
SLOW_CONNECTIONS, SLOW_BYTE_EVERY_S = (20, 3.0) if FULL else (6, 0.5)
RSS_GROWTH_LIMIT_MIB = 64  # the flood must cost less than this above the idle process


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@asynccontextmanager
async def serving(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[tuple[int, subprocess.Popen[bytes]]]:
    db = tmp_path / "relay.db"
    await asyncio.to_thread(shutil.copyfile, sqlite_template, db)
    port = free_port()
    env = relay_env(f"sqlite+aiosqlite:///{db}", port, RELAY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_S),
                    RELAY_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_S), RELAY_LOG_LEVEL="info")  # fmt: skip
    proc = start_relay(["serve"], env, tmp_path / "relay.log")
    try:
        await wait_healthy(port, proc)
        yield port, proc
    finally:
        await asyncio.to_thread(stop, proc)


async def read_answer(reader: asyncio.StreamReader, deadline_s: float) -> bytes:
    """Whatever the server sent before closing (b"" if it closed without a word); fails at the deadline."""
    try:
        return await asyncio.wait_for(reader.read(), deadline_s)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def flood_one(port: int, lines: int) -> tuple[int, bytes]:
    """Send up to `lines` header lines of 1 MiB; (bytes the server took, its answer) once it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    line = b"X-Flood: " + b"a" * (MIB - 11) + b"\r\n"
    try:
        writer.write(b"POST /webhooks/codat HTTP/1.1\r\nHost: relay\r\n")
        for _ in range(lines):
            writer.write(line)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(line)
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    answer = await read_answer(reader, 15)
    writer.close()
    return sent, answer


async def test_a_header_flood_gets_431_and_the_rss_stays_bounded(sqlite_template: Path, tmp_path: Path) -> None:
    """Connections sending 1 MiB header lines are answered 431 and closed; the process's RSS stays bounded."""
    async with serving(sqlite_template, tmp_path) as (port, proc):
        idle = rss_kib(proc.pid)
        peak = idle
        flood = asyncio.gather(*(flood_one(port, FLOOD_LINES) for _ in range(FLOOD_CONNECTIONS)))
        while not flood.done():
            peak = max(peak, rss_kib(proc.pid))
            await asyncio.sleep(0.02)
        results = await flood
        after = rss_kib(proc.pid)
        hwm = rss_kib(proc.pid, "VmHWM")
    answers = [answer.split(b"\r\n", 1)[0] for _, answer in results]
    figures = {"connections": FLOOD_CONNECTIONS, "lines_offered_mib": FLOOD_LINES,
               "rss_idle_mib": round(idle / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
               "rss_after_mib": round(after / 1024, 1), "vm_hwm_mib": round(hwm / 1024, 1),
               "answers": sorted({a.decode() for a in answers})}  # fmt: skip
    report(f"header-flood-{'full' if FULL else 'fast'}", figures)
    assert all(a in (b"HTTP/1.1 431 Request Header Fields Too Large", b"") for a in answers), answers
    assert b"HTTP/1.1 431 Request Header Fields Too Large" in answers
    assert (peak - idle) / 1024 < RSS_GROWTH_LIMIT_MIB, figures


async def one_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    answer = await read_answer(reader, 15)
    writer.close()
    return answer.split(b"\r\n", 1)[0]


async def test_complete_requests_with_too_many_or_too_large_headers_get_431(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """A whole request with huge headers (it was served: 200) or too many lines gets 431; a normal one still 200."""
    huge = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Big: " + b"b" * (8 * MIB if FULL else 2 * MIB) + b"\r\n\r\n"
    many = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n"
    in_one_read = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Big: " + b"c" * 70_000 + b"\r\n\r\n"
    async with serving(sqlite_template, tmp_path) as (port, _):
        got = [await one_request(port, head) for head in (huge, many, in_one_read)]
        fine = await one_request(port, b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    assert got == [b"HTTP/1.1 431 Request Header Fields Too Large"] * 3
    assert fine == b"HTTP/1.1 200 OK"


async def drip(port: int, every_s: float, deadline_s: float) -> float | None:
    """Send a request one byte at a time; seconds until the server closed it (None: still open at the deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    request = b"POST /webhooks/codat HTTP/1.1\r\nHost: relay\r\n" + b"X-Slow: " + b"s" * 10_000
    try:
        for byte in request:
            if reader.at_eof() or time.monotonic() - started > deadline_s:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            try:  # wait for the next byte's turn, or the server's answer and close
                await asyncio.wait_for(reader.read(), every_s)
                break
            except TimeoutError:
                continue
    except (ConnectionResetError, BrokenPipeError):
        pass
    closed = time.monotonic() - started
    writer.close()
    return closed if closed <= deadline_s else None


async def test_slow_headers_silent_connections_and_slow_bodies_are_cut_off(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Connections dripping a byte at a time, or sending nothing, are closed within the header timeout; a body
    slower than the body timeout is cut off, and that is no error of the server's."""
    deadline_s = HEADER_TIMEOUT_S + 3 * SLOW_BYTE_EVERY_S + 5
    async with serving(sqlite_template, tmp_path) as (port, _):
        closed = await asyncio.gather(*(drip(port, SLOW_BYTE_EVERY_S, deadline_s) for _ in range(SLOW_CONNECTIONS)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # says nothing at all
        silent = await read_answer(reader, HEADER_TIMEOUT_S + 5)
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks/codat HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n{")
        await writer.drain()
        started = time.monotonic()
        cut = await read_answer(reader, BODY_TIMEOUT_S + 5)
        body_cut_after = time.monotonic() - started
        writer.close()
    log = (tmp_path / "relay.log").read_text()
    report(f"slow-clients-{'full' if FULL else 'fast'}", {
        "connections": SLOW_CONNECTIONS, "byte_every_s": SLOW_BYTE_EVERY_S,
        "closed_after_s_max": max(c or float("inf") for c in closed), "body_cut_after_s": round(body_cut_after, 2)})
    assert None not in closed, closed
    assert max(c for c in closed if c is not None) <= HEADER_TIMEOUT_S + SLOW_BYTE_EVERY_S + 1.5
    assert silent.startswith(b"HTTP/1.1 408")
    assert cut == b"" and body_cut_after <= BODY_TIMEOUT_S + 1.5
    assert '"level": "error"' not in log and "unhandled_error" not in log


@pytest.mark.parametrize("variable", ["RELAY_MAX_HEADER_BYTES", "RELAY_MAX_HEADERS", "RELAY_HEADER_TIMEOUT_SECONDS",
                                      "RELAY_BODY_TIMEOUT_SECONDS", "RELAY_KEEPALIVE_SECONDS",
                                      "RELAY_MAX_CONNECTIONS"])  # fmt: skip
def test_every_server_limit_is_documented(variable: str) -> None:
    """Each limit is a setting in the README's table, with its default."""
    from tests.integration.harness import ROOT

    assert f"| `{variable}` |" in (ROOT / "README.md").read_text()
