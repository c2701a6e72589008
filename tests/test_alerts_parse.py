"""Parsing the three shapes into one `Alert`, and the signature verifier against the svix oracle."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from svix.webhooks import Webhook

from service.alerts import fold_type, parse_alert
from service.errors import InvalidSignature, MalformedPayload, MissingAuthentication, TimestampOutOfTolerance
from service.signatures import decode_secret, sign, verify
from service.testing import legacy_body, read_completed_body
from service.types import AlertKind, Shape
from tests.conftest import TEST_SECRET


def parse(obj: dict, header_id: str | None = None, signed: bool = False):  # type: ignore[no-untyped-def]
    return parse_alert(obj, json.dumps(obj).encode(), header_id=header_id, signed=signed)


def test_delivery_id_prefers_header_then_id_then_alert_id() -> None:
    """ID = webhook-id header, else the body's id, else AlertId (CONTRACT.md)."""
    body = legacy_body()
    assert parse(body, header_id="msg_1").delivery_id == "msg_1"
    assert parse(body).delivery_id == body["AlertId"]
    assert parse({**body, "id": "evt_9"}).delivery_id == "evt_9"


@pytest.mark.parametrize("bad", ["", "   ", None, True, [], {}])
def test_missing_delivery_id_is_malformed(bad: object) -> None:
    with pytest.raises(MalformedPayload):
        parse(legacy_body(AlertId=bad))


def test_legacy_fields_are_normalised() -> None:
    alert = parse(legacy_body())
    assert alert.kind is AlertKind.DATASET_STATUS and alert.shape is Shape.LEGACY
    assert (alert.data_type, alert.dataset_status) == ("commerce-payments", "ProcessingError")
    assert alert.dataset_id == "6586f21b-2f5a-4d1c-9b1e-3f6e8a0d4c11"


def test_rule_type_variants_fold_together() -> None:
    assert fold_type("Push Operation Status Changed()") == fold_type("PushOperationStatusChanged")
    assert fold_type("New company synchronised") == fold_type("NewCompanySynchronized")


@pytest.mark.parametrize(
    ("event", "kind"),
    [("read.completed", AlertKind.DATASET_STATUS), ("connection.reconnected", AlertKind.CONNECTION_STATUS),
     ("invoices.write.unsuccessful", AlertKind.PUSH_OPERATION), ("company.created", AlertKind.OTHER),
     ("client.rateLimit.reached", AlertKind.RATE_LIMIT), ("client.rateLimit.reset", AlertKind.RATE_LIMIT)],
)
def test_envelope_kinds(event: str, kind: AlertKind) -> None:
    body = read_completed_body(("commerce-orders", "Complete"))
    body["eventType"] = event
    assert parse(body, signed=True).kind is kind


@pytest.mark.parametrize("bad", [{"CompanyId": 1}, {"Data": "x"}, {"CompanyId": "a" * 300}, {"CompanyId": "a\x00b"}])
def test_odd_field_types_become_other(bad: dict) -> None:  # type: ignore[type-arg]
    """Fields the database could not hold as-is make the alert `other`, never a failed write."""
    alert = parse(legacy_body(**bad))
    assert alert.kind is AlertKind.OTHER and alert.shape is Shape.UNKNOWN


def test_verify_accepts_what_svix_signs_and_sign_matches_svix() -> None:
    """Our signer and verifier agree with the svix package byte for byte."""
    body = b'{"id":"x","eventType":"read.completed"}'
    at = 1_750_000_000
    svix_sig = Webhook(TEST_SECRET).sign("msg_1", datetime.fromtimestamp(at, UTC), body.decode())
    assert sign(decode_secret(TEST_SECRET), "msg_1", at, body) == svix_sig
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(at), "webhook-signature": svix_sig}
    assert verify(body, headers, [decode_secret(TEST_SECRET)], at + 299, 300) == "msg_1"
    with pytest.raises(TimestampOutOfTolerance):
        verify(body, headers, [decode_secret(TEST_SECRET)], at + 301, 300)
    with pytest.raises(InvalidSignature):
        verify(body + b" ", headers, [decode_secret(TEST_SECRET)], at, 300)
    with pytest.raises(MissingAuthentication):
        verify(body, {}, [decode_secret(TEST_SECRET)], at, 300)


def test_a_generated_date_without_a_zone_is_utc() -> None:
    """Codat writes UTC: a generatedDate without a zone is read as UTC, whatever the machine's own zone."""
    body = {"id": "e1", "eventType": "read.completed", "generatedDate": "2024-09-29T20:26:10", "payload": {}}
    zoned = {**body, "generatedDate": "2024-09-29T20:26:10Z"}
    stamps = [parse_alert(b, b"{}", header_id=None, signed=True).generated_at for b in (body, zoned)]
    assert stamps[0] == stamps[1] == 1727641570.0


# -- events as Codat sends them today (FACTS §6; specs/platform-current.json, `webhooks` and schemas) ----


def envelope(event: str, payload: dict) -> dict:  # type: ignore[type-arg]
    return {"id": "743ae4cf-0000-4000-8000-000000000001", "eventType": event,
            "generatedDate": "2026-06-01T10:00:00Z", "payload": payload}  # fmt: skip


COMPANY_REF = {"id": "8a210b68-6988-11ed-a1eb-0242ac120002", "name": "Toft stores", "tags": {}}


@pytest.mark.parametrize(("event", "data_type"), [
    ("commerce-orders.write.unsuccessful", "commerce-orders"), ("bills.write.successful", "bills"),
])  # fmt: skip
def test_a_write_event_carries_its_data_type_status_and_connection(event: str, data_type: str) -> None:
    """`{dataType}.write.*` (schema DataTypeWriteWebhook): data type from the name, `payload.status`, `connectionId`."""
    payload = {"id": "op-1", "type": "Create", "referenceCompany": COMPANY_REF, "connectionId": "2e9d2c44-1",
               "requestedOnDate": "2026-06-01T09:59:00Z", "status": "TimedOut", "record": None}  # fmt: skip
    alert = parse(envelope(event, payload))
    assert alert.kind is AlertKind.PUSH_OPERATION
    assert (alert.company_id, alert.connection_id) == (COMPANY_REF["id"], "2e9d2c44-1")
    assert (alert.data_type, alert.dataset_status) == (data_type, "TimedOut")


@pytest.mark.parametrize("event", ["company.created", "company.deleted"])
def test_a_company_event_takes_its_company_from_payload_id(event: str) -> None:
    """`company.*` (schema CompanyWebhook): the payload is the company itself; there is no referenceCompany."""
    alert = parse(envelope(event, {"id": COMPANY_REF["id"], "name": "Toft stores", "platform": "", "products": []}))
    assert alert.company_id == COMPANY_REF["id"]


def test_read_completed_keeps_each_data_types_issues() -> None:
    """`read.completed` `dataTypes[].issues[]` (schema ReadCompletedWebhook, 2025-06): type and message per issue."""
    issue = {"type": "warning.validation", "message": "Something doesn't look right", "links": {"logs": "https://x"}}
    payload = {"referenceCompany": COMPANY_REF, "modifiedFromDate": None, "dataTypes": [
        {"connectionId": "c-1", "dataType": "commerce-orders", "recordsModified": True, "status": "Complete",
         "issues": [issue]},
        {"connectionId": "c-1", "dataType": "commerce-payments", "recordsModified": False, "status": "FetchError",
         "issues": None},
    ]}  # fmt: skip
    alert = parse(envelope("read.completed", payload))
    orders, payments = alert.data_types
    assert [(i.type, i.message) for i in orders.issues] == [("warning.validation", "Something doesn't look right")]
    assert (payments.status, payments.issues) == ("FetchError", ())


@pytest.mark.parametrize("event", ["client.rateLimit.reached", "client.rateLimit.reset"])
def test_a_rate_limit_event_carries_quota_remaining_and_reset(event: str) -> None:
    """`client.rateLimit.*` (schema ClientRateLimitWebhook): `dailyQuota`, `quotaRemaining`, `expiryDate`."""
    payload = {"dailyQuota": 12000, "quotaRemaining": 0, "expiryDate": "2026-06-02T00:00:00Z"}
    alert = parse(envelope(event, payload))
    assert alert.rate_limit is not None
    assert (alert.rate_limit.daily_quota, alert.rate_limit.quota_remaining) == (12000, 0)
    assert alert.rate_limit.expires_at == datetime(2026, 6, 2, tzinfo=UTC).timestamp()


def test_the_legacy_shapes_still_parse_beside_the_new_ones() -> None:
    """The legacy PascalCase body and `read.completed` without issues parse as before."""
    assert parse(legacy_body()).data_types[0].issues == ()
    assert parse(read_completed_body()).kind is AlertKind.DATASET_STATUS
