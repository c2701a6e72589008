"""Codat's OpenAPI specs (shared/codat/specs) as JSON Schema documents the contract tests validate with."""

from __future__ import annotations

import json
from typing import Any

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
