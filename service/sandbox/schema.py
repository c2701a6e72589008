"""Request bodies checked against Codat's own OpenAPI specs, vendored in `specs/` (copies of shared/codat/specs).

The push bodies are held to `sync-commerce-2023-03-push-beta.json` at every level (`additionalProperties:
false`, types, `format: date-time`, enums, nested objects); company and sync bodies to
`sync-commerce-current.json`. `$ref`s resolve through a registry holding each spec as a resource.

The specs say `openapi: 3.1.0` yet mark optional values with OpenAPI 3.0's `nullable: true`, which JSON
Schema 2020-12 ignores; read literally, every `null` Codat's own examples send would be refused. They
are read as their generator meant them: `nullable: true` adds `null` to the type (`_with_nullable`).

The validator is jsonschema-rs: Python's `jsonschema` takes ~0.75 s for one 5,000-order push, this
~0.01 s, and the push benchmark drives hundreds of such pushes through the sandbox.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

import jsonschema_rs

PUSH_SPEC = "sync-commerce-2023-03-push-beta.json"
SYNC_SPEC = "sync-commerce-current.json"
VALIDATOR_NAME = "SandboxSchemaValidator"  # Codat's docs do not list its validators' names


@dataclass(frozen=True)
class Body:
    """Which spec schema a request body is held to: a JSON pointer into one vendored spec."""

    spec: str
    pointer: str


def request_body(spec: str, path: str, method: str = "post") -> Body:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return Body(spec, f"/paths/{escaped}/{method}/requestBody/content/application~1json/schema")


PUSH_BODIES = {
    data_type: request_body(PUSH_SPEC, f"/data/companies/{{companyId}}/sync/{data_type}")
    for data_type in ("commerce-orders", "commerce-payments", "commerce-transactions")
}
CREATE_COMPANY = Body(SYNC_SPEC, "/components/schemas/CreateCompany")
SYNC_LATEST = Body(SYNC_SPEC, "/components/schemas/SyncToLatestArgs")
SYNC_RANGE = Body(SYNC_SPEC, "/components/schemas/SyncRange")


def validation_item(item_id: str | None, message: str) -> dict[str, Any]:
    """One entry of Codat's `validation.errors` (ErrorMessage.errorValidationItem)."""
    return {"itemId": item_id, "message": message, "validatorName": VALIDATOR_NAME}


def errors(body: Body, instance: Any) -> list[dict[str, Any]]:
    """Codat-style validation errors naming each offending field, e.g. `orders[0].totalAmount: …`."""
    found = []
    for error in _validator(body).iter_errors(instance):
        path = list(error.instance_path)
        found.append(validation_item(_item_id(instance, path), f"{_where(path)}: {error.message}"))
    return found


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _item_id(instance: Any, path: list[Any]) -> str | None:
    """The record's own id when the error lies inside a record that has one, else the record's position."""
    if len(path) < 2 or not isinstance(path[1], int) or not isinstance(instance, dict):
        return None
    records = instance.get(path[0])
    record = records[path[1]] if isinstance(records, list) and path[1] < len(records) else None
    record_id = record.get("id") if isinstance(record, dict) else None
    return record_id if isinstance(record_id, str) and record_id else f"{path[0]}[{path[1]}]"


@cache
def _validator(body: Body) -> Any:
    # JSON pointers hold `{`/`}` (path templates), which a URI fragment must percent-encode.
    ref = f"urn:codat:{body.spec}#" + quote(body.pointer, safe="/~")
    return jsonschema_rs.Draft202012Validator({"$ref": ref}, registry=_registry(), validate_formats=True)


@cache
def _registry() -> Any:
    return jsonschema_rs.Registry([(f"urn:codat:{name}", load_spec(name)) for name in (PUSH_SPEC, SYNC_SPEC)])


@cache
def load_spec(name: str) -> dict[str, Any]:
    raw = resources.files("service.sandbox").joinpath("specs", name).read_text(encoding="utf-8")
    spec: dict[str, Any] = _with_nullable(json.loads(raw))
    return spec


def _with_nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema: `null` joins the type, the enum, or the `$ref`."""
    if isinstance(node, list):
        return [_with_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _with_nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out:
            out = {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
    return out
