"""Every key format that crosses modules, spelled once: the queue's lock keys and queueing locks.

A lock key orders jobs (one at a time per key, in id order); a queueing lock collapses a burst into one
waiting job (service/queue.py). Whoever builds or reads a key calls these, so its spelling can change in
one place; `tests/test_keys.py` fails when one of these prefixes is spelled anywhere else.
"""

from __future__ import annotations

ALERT_PREFIX = "company:"
PUSH_PREFIX = "push:"


def alert_lock(company_id: str | None) -> str | None:
    """One company's alerts run one at a time, in the order received; company-less alerts run unordered."""
    return f"{ALERT_PREFIX}{company_id}" if company_id else None


def push_lock(company_id: str, data_type: str) -> str:
    """One push per company and data type at a time, across every process (Codat rule 3)."""
    return f"{PUSH_PREFIX}{company_id}:{data_type}"


def poll_lock(dataset_id: str) -> str:
    """One waiting poll per dataset."""
    return f"poll:{dataset_id}"


def sync_check_lock(company_id: str) -> str:
    """One waiting sync check per company."""
    return f"check_sync:{company_id}"


def sync_follow_lock(company_id: str) -> str:
    """One waiting read of a started sync's status per company."""
    return f"follow_sync:{company_id}"


def schedule_lock(company_id: str, phase: str) -> str:
    """One waiting step of a company's sync schedule per phase (refresh, push, check, follow)."""
    return f"schedule:{company_id}:{phase}"


def periodic_lock(name: str) -> str:
    """One waiting run of a periodic job, whichever worker scheduled it."""
    return f"periodic:{name}"


def outbox_lock(company_id: str, data_type: str) -> str:
    """The advisory lock that serialises intake and push claims of one company and data type."""
    return f"outbox:{company_id}:{data_type}"


def codat_budget_key(company_id: str) -> str:
    """A company's share of Codat's rate limits (its request slots, a 429's wait) in service/budget.py."""
    return f"codat:{company_id}"


def company_of(lock_key: str | None) -> str | None:
    """The company a lock key belongs to (an alert's or a push's), or None for any other key."""
    if not lock_key:
        return None
    if lock_key.startswith(ALERT_PREFIX):
        return lock_key.removeprefix(ALERT_PREFIX) or None
    if lock_key.startswith(PUSH_PREFIX):
        # Data types never hold a colon; a company id may, so split at the last one.
        return lock_key.removeprefix(PUSH_PREFIX).rsplit(":", 1)[0]
    return None
