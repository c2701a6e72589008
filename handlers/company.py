"""`company.deleted`: the merchant's company is gone from Codat, so its data goes from codat-relay too.

Codat sends `company.deleted` with the company itself as the payload (schema CompanyWebhook: the id is
`payload.id`; docs/using-the-api/webhooks/event-types.md lists the event). Purging is irreversible, so
the event is not taken at its word: Codat is asked for the company (Platform `GET /companies/{companyId}`)
and only its 404 purges. The purge is queued behind the company's alerts (service/purge.py), so this
alert ends first and goes with the rest; one audit line in `purges` remains.
"""

from __future__ import annotations

from service import purge
from service.codat.client import CodatNotFound
from service.db import writer
from service.types import Alert, Context, Outcome

DELETED_EVENT = "company.deleted"


async def on_company_deleted(alert: Alert, ctx: Context) -> Outcome:
    if not alert.company_id:
        return Outcome.IGNORED
    try:
        await ctx.codat.get_company(alert.company_id)
    except CodatNotFound:
        async with writer(ctx.store).begin() as conn:
            await purge.request_purge(conn, alert.company_id, requested_by=f"codat {alert.type} {alert.delivery_id}",
                                      now=ctx.clock.now())  # fmt: skip
        return Outcome.DONE
    ctx.log.warning("company_deleted_but_present", company_id=alert.company_id)
    return Outcome.IGNORED
