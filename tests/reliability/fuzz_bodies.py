"""Hypothesis strategies for hostile request bodies: the raw material of the fuzzing tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from service.testing import connection_deleted_body, legacy_body, read_completed_body

HUGE_NUMBERS = (
    b"1e999999", b"-1e999999", b"1" + b"0" * 100_000, b"-" + b"9" * 100_000, b"1.5e-999999", b"NaN",
    b"Infinity", b"18446744073709551616", b"-9223372036854775809", b"0." + b"1" * 10_000,
)  # fmt: skip

# Values of every JSON type and then some: what a field of the wrong type may hold.
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50) | st.text(min_size=200, max_size=400) | st.just("\x00") | st.just("a\x00b")
    | st.just("\ud7ff\ue000\U0010ffff") | st.integers(min_value=2**63, max_value=2**80)
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def shapes() -> list[dict[str, Any]]:
    """One body of each of the three shapes (FACTS.md §4), plus the `type` spelling of the envelope."""
    envelope_type = read_completed_body(("commerce-orders", "Complete"), event_key="type")
    return [legacy_body(), read_completed_body(("commerce-orders", "FetchError")), connection_deleted_body(),
            envelope_type]  # fmt: skip


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to every field (objects and arrays alike) of a JSON value."""
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(item, rest, new) if i == head else item for i, item in enumerate(value)]


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """A known shape with one to three of its fields (at any depth) holding a value of another type."""
    body = draw(st.sampled_from(shapes()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(body)))
        body = replaced(body, path, draw(json_values))
    return json.dumps(body).encode()


@st.composite
def huge_numbers(draw: st.DrawFn) -> bytes:
    """A huge or non-finite number alone, or in place of a field of a known shape."""
    number = draw(st.sampled_from(HUGE_NUMBERS))
    if draw(st.booleans()):
        return number
    body = draw(st.sampled_from(shapes()))
    path = draw(st.sampled_from(paths(body)))
    marker = "__NUMBER__"
    return json.dumps(replaced(body, path, marker)).encode().replace(f'"{marker}"'.encode(), number)


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([100, 1000, 1025, 5000, 10_000, 100_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    closed = draw(st.booleans())
    inner = opener * depth + b"1" + (closer * depth if closed else b"")
    if draw(st.booleans()):  # inside an otherwise fine delivery
        return b'{"id": "deep-' + str(depth).encode() + b'", "eventType": "read.completed", "payload": ' + inner + b"}"
    return inner


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xc0\xaf"]))
    body = json.dumps(draw(st.sampled_from(shapes()))).encode()
    at = draw(st.integers(0, len(body)))
    return body[:at] + bad + body[at:]


@st.composite
def oversize(draw: st.DrawFn, limit: int) -> bytes:
    body = draw(st.sampled_from(shapes()))
    body["padding"] = "x" * (limit + draw(st.integers(0, 4096)))
    return json.dumps(body).encode()


def hostile_bodies(limit: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2048),
        st.text(max_size=300).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        invalid_utf8(),
        deep_nesting(),
        huge_numbers(),
        wrong_types(),
        oversize(limit),
        st.sampled_from([b"", b"{}", b"[]", b"null", b'{"id": ""}', b'{"id": null}', b'{"AlertId": true}']),
    )
