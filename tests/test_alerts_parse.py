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
     ("client.rateLimit.reached", AlertKind.OTHER)],
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
