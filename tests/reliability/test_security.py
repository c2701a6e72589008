"""Security: forged, replayed and wrongly-authorised requests are rejected; no secret ever reaches a log.

In-process, on both backends: replays outside the signature tolerance, wrong secrets, missing and
wrong credentials, the admin API with no token / the intake token / a wrong token, the intake API with
the admin token — every one 401 and nothing stored. Then a real `codat-relay serve` at log level debug
is put through all of it (and through Codat calls and failing staff notifications), and every line it
wrote is searched for every secret value, in every spelling a careless log line might use. Those
values join the session's scan of every log the suite wrote (tests/reliability/logscan.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service import testing
from service.clock import FixedClock
from service.db import alerts, jobs, records
from service.testing import legacy_body, sandbox_company
from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, TEST_SECRET, make_settings
from tests.integration.harness import free_port, relay_env, start, stop, wait_http
from tests.reliability import logscan
from tests.reliability.common import backend, delivery, report, start_relay, until, wait_healthy
from tests.reliability.inprocess import App, app_in_thread
from tests.reliability.recording_handlers import create_tables

TOLERANCE_S = 300
WRONG_SECRET = "whsec_" + base64.b64encode(b"not-the-secret-of-this-endpoint!").decode()
ORDER = {"id": "o-1", "orderNumber": "1", "currency": "GBP", "totalAmount": 10.0,
         "createdDate": "2024-01-01T00:00:00Z", "sourceModifiedDate": "2024-01-01T00:00:00Z"}  # fmt: skip
# Every admin endpoint (CONTRACT.md), with a body where it takes one.
ADMIN_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/alerts", None),
    ("GET", "/v1/alerts/some-id", None),
    ("POST", "/v1/alerts/some-id/replay", None),
    ("GET", "/v1/companies/co-sec", None),
    ("POST", "/v1/companies/co-sec/pause", None),
    ("POST", "/v1/companies/co-sec/resume", None),
    ("POST", "/v1/companies/co-sec/sync/latest", {}),
    ("POST", "/v1/companies/co-sec/sync/historic", {"start": "2024-01-01T00:00:00Z", "end": "2024-02-01T00:00:00Z"}),
    ("GET", "/v1/companies/co-sec/sync/status", None),
    ("GET", "/metrics", None),
]
INTAKE = ("PUT", "/v1/companies/co-sec/records/orders", {"records": [ORDER]})


def signed_headers(
    body: bytes, msg_id: str, timestamp: float, secret: str = TEST_SECRET, prefix: str = "webhook-"
) -> dict[str, str]:
    return testing.signed_headers(body, secret, msg_id=msg_id, at=timestamp, prefix=prefix)


def wrong_credentials(right: str, other: str) -> dict[str, dict[str, str]]:
    """Ways to ask without the right bearer token: none, the other role's, a wrong one, wrong schemes."""
    return {
        "missing": {},
        "other_role": {"authorization": f"Bearer {other}"},
        "wrong": {"authorization": f"Bearer {right}x"},
        "prefix": {"authorization": f"Bearer {right[:-1]}"},
        "empty": {"authorization": "Bearer "},
        "basic": {"authorization": "Basic " + base64.b64encode(right.encode()).decode()},
        "bare": {"authorization": right},
    }


def count(app: App, table: sa.Table) -> int:
    return int(app.scalar(sa.select(sa.func.count()).select_from(table)))


def test_forged_replayed_and_unauthorised_requests_are_rejected(database_url: str) -> None:
    """Stale or future timestamps, wrong secrets, missing/wrong credentials, wrong roles → 401, nothing stored."""
    clock = FixedClock(time.time())
    rejected: dict[str, int] = {}
    # Every wrong credential below must reach its own check (401), not the failure throttle (429).
    settings = make_settings(database_url, signature_tolerance_seconds=TOLERANCE_S, auth_failure_limit=10_000)
    with app_in_thread(settings, clock) as app:
        body = json.dumps(legacy_body(AlertId="sec-1")).encode()
        original = signed_headers(body, "sec-1", clock.now())
        assert app.request("POST", "/webhooks/codat", content=body, headers=original).status_code == 202

        def webhook(name: str, content: bytes, headers: dict[str, str], code: str) -> None:
            response = app.request("POST", "/webhooks/codat", content=content, headers=headers)
            assert (response.status_code, response.json().get("error")) == (401, code), (name, response.text)
            rejected[name] = response.status_code

        fresh = json.dumps(legacy_body(AlertId="sec-2")).encode()
        clock.advance(TOLERANCE_S + 1)  # the captured delivery, replayed once the tolerance has passed
        webhook("replay_after_tolerance", body, original, "timestamp_out_of_tolerance")
        webhook("svix_replay_after_tolerance", body,
                signed_headers(body, "sec-1", clock.now() - TOLERANCE_S - 1, prefix="svix-"),
                "timestamp_out_of_tolerance")  # fmt: skip
        webhook("future_timestamp", fresh, signed_headers(fresh, "sec-2", clock.now() + TOLERANCE_S + 1),
                "timestamp_out_of_tolerance")  # fmt: skip
        webhook("wrong_secret", fresh, signed_headers(fresh, "sec-2", clock.now(), WRONG_SECRET),
                "invalid_signature")  # fmt: skip
        resigned = signed_headers(fresh, "sec-2", clock.now())
        webhook("signature_of_other_body", body, resigned, "invalid_signature")
        webhook("signature_of_other_id", fresh, {**resigned, "webhook-id": "sec-3"}, "invalid_signature")
        webhook("other_version_only", fresh, {**resigned, "webhook-signature": resigned["webhook-signature"]
                .replace("v1,", "v2,")}, "invalid_signature")  # fmt: skip
        webhook("missing", fresh, {}, "missing_authentication")
        webhook("wrong_authorization", fresh, {"authorization": TEST_AUTH_HEADER + "x"}, "invalid_credentials")
        webhook("secret_as_authorization", fresh, {"authorization": TEST_SECRET}, "invalid_credentials")

        for method, path, payload in ADMIN_ENDPOINTS:
            for name, headers in wrong_credentials(ADMIN_TOKEN, API_TOKEN).items():
                response = app.request(method, path, json=payload, headers=headers)
                assert response.status_code == 401, (method, path, name, response.text)
                rejected[f"{method} {path} {name}"] = 401
        method, path, payload = INTAKE
        for name, headers in wrong_credentials(API_TOKEN, ADMIN_TOKEN).items():
            response = app.request(method, path, json=payload, headers=headers)
            assert response.status_code == 401, (path, name, response.text)
            rejected[f"intake {name}"] = 401

        assert count(app, alerts) == 1 and count(app, records) == 0  # only the one authentic delivery
        # The right tokens still work, so the 401s above are about the credentials, nothing else.
        admin = app.request("GET", "/v1/alerts", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        intake = app.request(method, path, json=payload, headers={"authorization": f"Bearer {API_TOKEN}"})
        assert (admin.status_code, intake.status_code) == (200, 202), (admin.text, intake.text)
    report(f"security-rejections-{backend(database_url)}", {"backend": backend(database_url),
           "rejected": len(rejected), "accepted_wrongly": 0})  # fmt: skip


# -- the log scan ------------------------------------------------------------------------------------


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class Secrets:
    """Fresh random values for every secret setting, so any match in a log is certainly a leak."""

    def __init__(self, dead_port: int) -> None:
        self.webhook_secrets = ["whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() for _ in range(2)]
        self.auth_header = "Basic " + b64("codat:" + secrets.token_hex(16))
        self.api_token = "api-" + secrets.token_urlsafe(24)
        self.admin_token = "adm-" + secrets.token_urlsafe(24)
        self.codat_api_key = secrets.token_hex(20)
        self.slack_path = secrets.token_hex(12)
        self.smtp_password = "pw-" + secrets.token_hex(12)
        self.dead_port = dead_port
        self.wrong = [
            "Bearer wrong-" + secrets.token_hex(12),
            "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        ]

    def env(self, sandbox_port: int) -> dict[str, str]:
        return {
            "RELAY_WEBHOOK_SECRETS": ",".join(self.webhook_secrets),
            "RELAY_WEBHOOK_AUTH_HEADER": self.auth_header,
            "RELAY_API_TOKEN": self.api_token,
            "RELAY_ADMIN_TOKEN": self.admin_token,
            "RELAY_CODAT_API_KEY": self.codat_api_key,
            "RELAY_CODAT_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
            "RELAY_NOTIFY_SLACK_WEBHOOK_URL": f"http://127.0.0.1:{self.dead_port}/services/T0/B0/{self.slack_path}",
            "RELAY_NOTIFY_EMAIL_TO": "staff@example.com",
            "RELAY_SMTP_URL": f"smtp://relay:{self.smtp_password}@127.0.0.1:{self.dead_port}",
            "RELAY_LOG_LEVEL": "debug",
            "RELAY_MAX_ATTEMPTS": "1",  # the failing alert dies at once, so staff notifications go out
        }

    def needles(self) -> dict[str, str]:
        """name → value that must not appear in any log line."""
        found: dict[str, str] = {}
        for i, secret in enumerate(self.webhook_secrets):
            raw = secret.removeprefix("whsec_")
            found[f"webhook_secret_{i}"] = raw  # covers the whsec_ form too
            found[f"webhook_key_{i}_hex"] = base64.b64decode(raw).hex()
        found["legacy_authorization"] = self.auth_header.removeprefix("Basic ")
        found["api_token"] = self.api_token
        found["admin_token"] = self.admin_token
        found["codat_api_key"] = self.codat_api_key
        found["codat_api_key_base64"] = b64(self.codat_api_key)
        found["slack_url_secret"] = self.slack_path
        found["smtp_password"] = self.smtp_password
        for i, value in enumerate(self.wrong):
            found[f"presented_wrong_credential_{i}"] = value.removeprefix("Bearer ").removeprefix("whsec_")
        return found


async def exercise(base: str, s: Secrets) -> int:
    """Everything a relay meets, failures included; the number of requests made."""
    key = s.webhook_secrets[1]  # the second, rotated-in secret
    admin = {"authorization": f"Bearer {s.admin_token}"}
    requests = 0
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            nonlocal requests
            requests += 1
            return await client.request(method, path, **kwargs)

        for index in range(3):
            item = delivery(index, "scan")
            await call(
                "POST",
                "/webhooks/codat",
                content=item.body,
                headers=signed_headers(item.body, item.id, time.time(), key),
            )
            await call("POST", "/webhooks/codat", content=item.body, headers={"authorization": s.auth_header})
        failing = delivery(0, "explode")
        await call(
            "POST",
            "/webhooks/codat",
            content=failing.body,
            headers=signed_headers(failing.body, failing.id, time.time(), key),
        )
        body = delivery(9, "scan-bad").body
        await call(
            "POST",
            "/webhooks/codat",
            content=body,
            headers=signed_headers(body, "scan-bad", time.time(), s.wrong[1]),
        )
        await call(
            "POST", "/webhooks/codat", content=body, headers=signed_headers(body, "scan-old", time.time() - 3600, key)
        )
        await call("POST", "/webhooks/codat", content=body, headers={"authorization": s.wrong[0]})
        await call("POST", "/webhooks/codat", content=body, headers={"authorization": s.auth_header + "x"})
        await call("POST", "/webhooks/codat", content=b"{not json", headers={"authorization": s.auth_header})
        await call("POST", "/webhooks/codat", content=body)
        for method, path, payload in ADMIN_ENDPOINTS:
            for headers in (admin, {"authorization": f"Bearer {s.api_token}"}, {"authorization": s.wrong[0]}, {}):
                await call(method, path, json=payload, headers=headers)
        method, path, payload = INTAKE
        for headers in ({"authorization": f"Bearer {s.api_token}"}, admin, {"authorization": s.wrong[0]}):
            await call(method, path, json=payload, headers=headers)
        await call(method, path, json={"records": [{"id": 5}]}, headers={"authorization": f"Bearer {s.api_token}"})
    return requests


async def notified(database_url: str) -> bool:
    """The failing alert is dead and its staff notification was attempted (and failed: dead port)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            dead = await conn.scalar(sa.select(alerts.c.status).where(alerts.c.id == "explode-000000"))
            tried = await conn.scalar(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.kind == "notify", jobs.c.attempts > 0)
            )
    finally:
        await engine.dispose()
    return dead == "dead" and bool(tried)


async def test_no_secret_reaches_the_logs_of_a_real_server_at_debug_level(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """A debug-level server through success, every failure, Codat calls and failed notifications: no secret logged."""
    db = tmp_path / "relay.db"
    await asyncio.to_thread(shutil.copyfile, sqlite_template, db)
    database_url = f"sqlite+aiosqlite:///{db}"
    await create_tables(database_url)
    port, sandbox_port = free_port(), free_port()
    s = Secrets(dead_port=free_port())
    logscan.EXTRA_NEEDLES.update({f"security_{name}": value for name, value in s.needles().items()})
    env = relay_env(database_url, port, **s.env(sandbox_port))
    sandbox_env = {k: v for k, v in env.items() if not k.startswith("RELAY_")}
    sandbox = start(["sandbox", "--port", str(sandbox_port), "--pace-seconds", "0", "--api-key", s.codat_api_key],
                    sandbox_env, tmp_path / "sandbox.log")  # fmt: skip
    log_path = tmp_path / "relay.log"
    proc = start_relay(["serve"], env, log_path)
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{sandbox_port}/_sandbox/config", sandbox)
        await asyncio.to_thread(sandbox_company, f"http://127.0.0.1:{sandbox_port}", "co-sec")  # INTAKE's
        await wait_healthy(port, proc)
        requests = await exercise(f"http://127.0.0.1:{port}", s)
        await until(lambda: notified(database_url), bool, 30, "the failing alert dead and its notification tried")
    finally:
        exit_code = await asyncio.to_thread(stop, proc)
        stop(sandbox)
    text = await asyncio.to_thread(log_path.read_text, errors="replace")
    lines = text.splitlines()
    leaks = {name: [line[:300] for line in lines if value in line][:3] for name, value in s.needles().items()}
    leaks = {name: found for name, found in leaks.items() if found}
    events = {json.loads(line).get("event") for line in lines if line.startswith("{")}
    figures = {"requests": requests, "log_lines": len(lines), "secrets_searched": len(s.needles()),
               "leaks": len(leaks), "exit_code": exit_code}  # fmt: skip
    report("security-log-scan-sqlite", figures)
    assert exit_code in (0, -signal.SIGTERM)
    # The scan means something only if the server really logged its work, failures included.
    assert {"webhook_received", "job_finished", "job_dead"} <= events, sorted(e for e in events if e)
    assert not leaks, json.dumps(leaks, indent=1)


def test_the_session_log_scan_finds_each_spelling_of_a_secret(tmp_path: Path) -> None:
    """The suite-wide scan reports a planted secret in each spelling it searches for, and nothing in clean text."""
    planted = tmp_path / "planted.txt"  # not *.log: the session's own scan must not find it
    searched = logscan.needles()
    planted.write_text("\n".join(f'{{"event": "oops", "value": "x{value}y"}}' for value in searched.values()))
    clean = tmp_path / "clean.txt"
    clean.write_text('{"event": "webhook_received", "outcome": "accepted", "lock_key": "key"}\n' * 3)
    found = logscan.scan([planted, clean], searched)
    assert (found.files, found.lines) == (2, len(searched) + 3)
    assert set(found.leaks) == set(searched)
    assert logscan.scan([clean], searched).leaks == {}
