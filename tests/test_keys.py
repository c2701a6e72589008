"""Key formats: each spelled by one function in service/keys.py, read back by one, and nowhere else."""

from __future__ import annotations

import re

import pytest

from service import keys
from tests.owners import literal_arguments, string_literals

# Every prefix keys.py spells; a literal starting with one of them elsewhere is a second spelling.
PREFIXES = ("company:", "push:", "poll:", "check_sync:", "follow_sync:", "periodic:", "outbox:", "codat:")
# A prefix opening a literal or quoted in SQL, and followed by what a key's rest would be built from (an
# f-string's next part, `+`, `%s`, `{}`, a closing quote): "outbox: records or …" in prose is no key.
SPELLED = re.compile("(?:^|['\"])(?:" + "|".join(re.escape(prefix) for prefix in PREFIXES) + ")(?=$|['\"{%])")
KEYS_MODULE = "service/keys.py"
KEY_ARGUMENTS = frozenset({"lock_key", "queueing_lock"})


def test_lock_key() -> None:
    """Alerts of one company share a key; company-less alerts run unordered."""
    assert (keys.alert_lock("C1"), keys.alert_lock(None), keys.alert_lock("")) == ("company:C1", None, None)


def test_key_formats() -> None:
    """Each key names its kind of work and what it is for, so two kinds never share a key."""
    made = [keys.push_lock("C1", "orders"), keys.poll_lock("D1"), keys.sync_check_lock("C1"),
            keys.sync_follow_lock("C1"), keys.periodic_lock("sweep"), keys.outbox_lock("C1", "orders"),
            keys.codat_budget_key("C1")]  # fmt: skip
    assert made == ["push:C1:orders", "poll:D1", "check_sync:C1", "follow_sync:C1", "periodic:sweep",
                    "outbox:C1:orders", "codat:C1"]  # fmt: skip


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


def spellings(texts: dict[str, str] | None = None) -> list[str]:
    """Key prefixes spelled in code outside service/keys.py: a literal made of one (an f-string's first
    part, say), or one quoted inside SQL (`'company:' || id`)."""
    return [
        f"{path}:{line}: {text!r}"
        for path, line, text in string_literals(texts)
        if path != KEYS_MODULE and SPELLED.search(text)
    ]


def test_key_prefixes_are_spelled_only_in_keys_module() -> None:
    """No module but service/keys.py spells a key prefix in code (docstrings aside), so a format has one owner."""
    assert spellings() == []


def test_the_guard_sees_f_strings_and_sql() -> None:
    """The scan finds a prefix opening an f-string or a string, and one quoted inside SQL text; prose, in a
    docstring or a description that happens to open with one of the words, is not a spelling."""
    source = '''
"""Keys look like `company:ID`."""
def lock(c):
    return f"company:{c}"
PUSH = "push:" + "x"
SQL = "SELECT 'poll:' || id FROM t"
NOT_A_KEY = "the company: acme"
PROSE = "outbox: records or connection events made it a row"
'''
    assert sorted(found.split(": ", 1)[0] for found in spellings({"example.py": source})) == [
        "example.py:4", "example.py:5", "example.py:6",
    ]


def test_every_key_handed_to_the_queue_comes_from_a_function() -> None:
    """No call hands the queue a lock key or queueing lock written as a literal or an f-string: a new key
    format, whatever its prefix, must be added to service/keys.py first."""
    assert literal_arguments(KEY_ARGUMENTS) == []


def test_the_call_site_guard_sees_literal_keys() -> None:
    """The scan flags a key built in place, and passes one that a function built."""
    source = '''
queue.enqueue(conn, "k", {}, now=0, queueing_lock=f"follow_sync:{company}")
queue.enqueue(conn, "k", {}, now=0, lock_key="fixed")
queue.enqueue(conn, "k", {}, now=0, lock_key="x:" + company)
queue.enqueue(conn, "k", {}, now=0, lock_key=keys.push_lock(company, "orders"), queueing_lock=lock)
'''
    assert literal_arguments(KEY_ARGUMENTS, {"example.py": source}) == [
        "example.py:2: queueing_lock", "example.py:3: lock_key", "example.py:4: lock_key",
    ]
