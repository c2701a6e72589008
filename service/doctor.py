"""`codat-relay doctor`: one checklist after deploying, each line passed or failed with its fix.

Workers alive — the rule, since workers write no heartbeat row: a running job whose lease has expired
means its worker died; a waiting job due for more than WORKER_STALL_S means no worker is claiming. Either
fails the check; an idle queue passes (nothing says a worker is needed right now).
The signing secret — against the sandbox, each consumer at our URL sends a signed test delivery and the relay
must accept it; against Codat (no API sends one), the latest signed delivery the relay stored was verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import migrate, subscriptions
from service.codat.client import CodatAuthError, CodatClient, CodatError
from service.codat.models import WebhookConsumer
from service.db import alerts, companies, jobs
from service.queue import JobStatus
from service.settings import Settings
from service.types import AlertStatus, Shape

WORKER_STALL_S = 60.0
RECENT_DELIVERY_S = 24 * 3600.0
PROBE_TIMEOUT_S = 20.0
CODAT_HOST = "api.codat.io"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


async def codat_checks(codat: CodatClient, settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    """API key, subscription, reachability and signing secret (these need Codat and the public URL)."""
    try:
        consumers = await codat.list_webhook_consumers()
    except CodatAuthError:
        return [Check("Codat API key", False, "Codat refused the API key (401/403)",
                      "set RELAY_CODAT_API_KEY to a key from the Portal (Developers > API keys)")]  # fmt: skip
    except (CodatError, httpx.HTTPError) as exc:
        return [Check("Codat API key", False, f"Codat did not answer: {type(exc).__name__}",
                      f"check RELAY_CODAT_BASE_URL ({settings.codat_base_url}) and the network")]  # fmt: skip
    checks = [Check("Codat API key", True, f"accepted by {settings.codat_base_url}")]
    if settings.public_url is None:
        return [*checks, Check("subscription", False, "RELAY_PUBLIC_URL is not set",
                               "set RELAY_PUBLIC_URL to where Codat reaches this relay, then `codat-relay subscribe`")]
    url = subscriptions.webhook_url(settings.public_url)
    missing = subscriptions.missing_types(consumers, url)
    checks.append(Check("subscription", not missing,
                        f"missing event types at {url}: {', '.join(missing)}" if missing
                        else f"every needed event type has an enabled consumer at {url}",
                        "run `codat-relay subscribe` (add --replace if it shows differing consumers)"))  # fmt: skip
    checks.append(await _reachable(http, settings.public_url))
    mine = [c for c in consumers if subscriptions.same_url(c.url, url)]
    if is_sandbox(settings):
        checks.append(await _sandbox_secrets(http, settings.codat_base_url, mine))
    return checks


async def _reachable(http: httpx.AsyncClient, public_url: str) -> Check:
    try:
        status = (await http.get(public_url + "/healthz", timeout=PROBE_TIMEOUT_S)).status_code
    except httpx.HTTPError as exc:
        status, why = None, type(exc).__name__
    else:
        why = f"answered {status}"
    ok = status == 200
    return Check("public URL reachable", ok, f"{public_url}/healthz {why}",
                 "" if ok else "start the relay, or fix RELAY_PUBLIC_URL / the proxy in front of it")  # fmt: skip


def is_sandbox(settings: Settings) -> bool:
    return httpx.URL(settings.codat_base_url).host != CODAT_HOST


async def _sandbox_secrets(http: httpx.AsyncClient, base_url: str, mine: Sequence[WebhookConsumer]) -> Check:
    refused: list[str] = []
    for consumer in mine:
        try:
            answer = await http.post(f"{base_url}/_sandbox/consumers/{consumer.id}/test", timeout=PROBE_TIMEOUT_S)
            status = answer.json().get("status")
        except (httpx.HTTPError, ValueError):
            status = None
        if not isinstance(status, int) or not 200 <= status < 300:
            refused.append(f"{consumer.id} ({','.join(consumer.event_types)}: {status})")
    ok = bool(mine) and not refused
    detail = (f"{len(mine)} consumers' signed test deliveries accepted" if ok else
              f"refused: {'; '.join(refused)}" if refused else "no consumer to test")  # fmt: skip
    return Check("signing secret", ok, detail,
                 "" if ok else "put each consumer's signing secret (sandbox: GET /_sandbox/consumers; Codat: the "
                 "Portal) in RELAY_WEBHOOK_SECRETS and restart the relay")  # fmt: skip


async def database_checks(engine: AsyncEngine, settings: Settings, now: float, *, sandbox: bool) -> list[Check]:
    async with engine.connect() as conn:
        revision = await migrate.current_revision_quietly(conn)
        head = migrate.head_revision()
        checks = [Check("database migrated", revision == head, f"revision {revision}, code expects {head}",
                        "run `codat-relay migrate`")]  # fmt: skip
        if revision != head:
            return checks
        lost = await _count(conn, jobs, (jobs.c.status == JobStatus.RUNNING.value) & (jobs.c.lease_expires_at < now))
        stalled = await _count(conn, jobs, (jobs.c.status == JobStatus.WAITING.value)
                               & (jobs.c.run_at < now - WORKER_STALL_S))  # fmt: skip
        checks.append(Check("workers alive", not lost and not stalled,
                            f"{lost} running jobs with an expired lease, {stalled} due jobs waiting > "
                            f"{WORKER_STALL_S:.0f} s", "start `codat-relay serve` or `worker`"))  # fmt: skip
        last = (await conn.execute(sa.select(sa.func.max(alerts.c.received_at)))).scalar()
        checks.append(Check("deliveries received recently", last is not None and now - last < RECENT_DELIVERY_S,
                            "none yet" if last is None else f"last {max(0.0, now - last):.0f} s ago",
                            "check the consumers are enabled in the Portal; send an example"))  # fmt: skip
        if not sandbox:
            signed_shapes = [Shape.ENVELOPE.value, Shape.LEGACY_SIGNED.value]
            signed = await _count(conn, alerts, alerts.c.shape.in_(signed_shapes))
            checks.append(Check("signing secret", signed > 0, f"{signed} signed deliveries verified and stored",
                                "send an example from the Portal; a 401 in its log means the consumer's secret is "
                                "missing from RELAY_WEBHOOK_SECRETS"))  # fmt: skip
        paused = list((await conn.execute(sa.select(companies.c.id).where(companies.c.paused))).scalars())
        named = f": {', '.join(paused[:5])}" if paused else ""
        checks.append(Check("companies paused", not paused, f"{len(paused)} paused{named}",
                            "`codat-relay companies show ID`, then `codat-relay companies resume ID`"))  # fmt: skip
        dead_jobs = await _count(conn, jobs, jobs.c.status == JobStatus.DEAD.value)
        dead_alerts = await _count(conn, alerts, alerts.c.status == AlertStatus.DEAD.value)
        checks.append(Check("dead jobs", not dead_jobs and not dead_alerts,
                            f"{dead_jobs} dead jobs, {dead_alerts} dead alerts",
                            "`codat-relay alerts list --status dead`, `codat-relay alerts replay --dead`"))  # fmt: skip
    return checks


async def _count(conn: AsyncConnection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
    return int((await conn.execute(sa.select(sa.func.count()).select_from(table).where(where))).scalar() or 0)
