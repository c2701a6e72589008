"""Codat's OpenAPI specs (shared/codat/specs) as JSON Schema documents the contract tests validate with."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import SPECS_DIR


def with_nullable(node: Any) -> Any:
    """OpenAPI 3.0 `nullable` → JSON Schema; everything else is kept so `$ref` pointers still resolve."""
    if isinstance(node, list):
        return [with_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: with_nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out:
            out = {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
    return out


def load_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = with_nullable(json.loads((SPECS_DIR / name).read_text()))
    return spec


WEBHOOKS_SPEC = "webhooks-2024-10.yaml"
SPEC_NAMES = ("sync-commerce-2023-03-push-beta.json", "sync-commerce-current.json", "platform-current.json")


class _StringDates(yaml.SafeLoader):
    """YAML without implicit timestamps: the examples' dates stay the strings Codat sends."""


_StringDates.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@cache
def load_webhooks_spec() -> dict[str, Any]:
    spec: dict[str, Any] = with_nullable(yaml.load((SPECS_DIR / WEBHOOKS_SPEC).read_text(), Loader=_StringDates))  # noqa: S506 - a SafeLoader
    return spec


def _date_time(value: object) -> bool:
    """RFC 3339 date-time (OpenAPI's `format: date-time`); jsonschema checks it only with an extra package."""
    if not isinstance(value, str):
        return True
    if not RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
FORMATS = FormatChecker()
FORMATS.checks("date-time")(_date_time)


@cache
def registry() -> Registry:
    """Every spec as a resource (`urn:<file name>`), so that `$ref`s across and within them resolve."""
    found: Registry = Registry()
    for name in SPEC_NAMES:
        found = found.with_resource(f"urn:{name}", Resource.from_contents(load_spec(name), DRAFT202012))
    return found.with_resource(f"urn:{WEBHOOKS_SPEC}", Resource.from_contents(load_webhooks_spec(), DRAFT202012))


def spec_errors(instance: Any, spec: str, pointer: str) -> list[str]:
    """Where `instance` breaks the schema at `pointer` of `spec` (formats checked); [] when it fits."""
    validator = Draft202012Validator({"$ref": f"urn:{spec}#{pointer}"}, registry=registry(), format_checker=FORMATS)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]


def pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def response_schema(spec: str, path: str, method: str, status: int) -> str:
    """The JSON pointer of an operation's response schema for `status` (following a response `$ref`)."""
    document = _spec(spec)
    response = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:  # e.g. "#/components/responses/Not-Found"
        name = response["$ref"].rsplit("/", 1)[-1]
        return pointer("components", "responses", name, "content", "application/json", "schema")
    return pointer("paths", path, method, "responses", str(status), "content", "application/json", "schema")


@cache
def _spec(name: str) -> dict[str, Any]:
    return load_spec(name)
