"""Key formats: each spelled by one function in service/keys.py and read back by one."""

from __future__ import annotations

import pytest

from service import keys


def test_lock_key() -> None:
    """Alerts of one company share a key; company-less alerts run unordered."""
    assert (keys.alert_lock("C1"), keys.alert_lock(None), keys.alert_lock("")) == ("company:C1", None, None)


def test_key_formats() -> None:
    """Each key names its kind of work and what it is for, so two kinds never share a key."""
    made = [keys.push_lock("C1", "orders"), keys.poll_lock("D1"), keys.sync_check_lock("C1"),
            keys.periodic_lock("sweep"), keys.outbox_lock("C1", "orders")]  # fmt: skip
    assert made == ["push:C1:orders", "poll:D1", "check_sync:C1", "periodic:sweep", "outbox:C1:orders"]


@pytest.mark.parametrize(
    ("lock_key", "company"),
    [
        (keys.alert_lock("C1"), "C1"),
        (keys.push_lock("C1", "orders"), "C1"),
        (keys.push_lock("acme:eu", "payments"), "acme:eu"),  # a company id may hold a colon
        (keys.alert_lock(None), None),
        (keys.poll_lock("D1"), None),
        (keys.periodic_lock("sweep"), None),
        ("company:", None),
    ],
)
def test_company_of_reads_what_the_builders_wrote(lock_key: str | None, company: str | None) -> None:
    """The company read back from a key is the one it was built for; other keys belong to no company."""
    assert keys.company_of(lock_key) == company

