"""Alert handlers: one module per alert family, mapped here from alert kind to handler.

Kinds absent from `REGISTRY` end `ignored` when processed.
"""

from __future__ import annotations

from service.types import AlertKind, Handler

REGISTRY: dict[AlertKind, Handler] = {}
