"""The shared vocabulary: alerts, outcomes, the handler context and the handler signature."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # real types for mypy; imported at run time they would cycle (each of these imports this)
    import structlog
    from sqlalchemy.ext.asyncio import AsyncEngine

    from service.clock import Clock
    from service.codat.client import CodatClient
    from service.notifications import Notifier
    from service.settings import Settings
    from service.tracking import Tracker


class AlertKind(enum.StrEnum):
    DATASET_STATUS = "dataset_status"
    CONNECTION_DELETED = "connection_deleted"
    SYNC_COMPLETED = "sync_completed"
    PUSH_OPERATION = "push_operation"
    CONNECTION_STATUS = "connection_status"
    COMPANY_DELETED = "company_deleted"
    RATE_LIMIT = "rate_limit"
    OTHER = "other"


class AlertStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    IGNORED = "ignored"
    DEAD = "dead"


class Shape(enum.StrEnum):
    LEGACY = "legacy"  # PascalCase alert-rule body, unsigned (FACTS §4a)
    LEGACY_SIGNED = "legacy_signed"  # the same body delivered signed by the Svix-based service (§4b)
    ENVELOPE = "envelope"  # {id, eventType, generatedDate, payload} (§4c)
    UNKNOWN = "unknown"  # a JSON object with a delivery id that fits no known shape


class Issue(BaseModel):
    """A problem Codat met reading one data type (`read.completed` `dataTypes[].issues[]`, since 2025-06)."""

    model_config = ConfigDict(frozen=True)

    type: str | None = None
    message: str | None = None


class DataTypeStatus(BaseModel):
    """One data type an alert speaks of; `read.completed` carries several."""

    model_config = ConfigDict(frozen=True)

    data_type: str | None = Field(default=None, serialization_alias="dataType")
    status: str | None = None
    dataset_id: str | None = Field(default=None, serialization_alias="datasetId")
    connection_id: str | None = Field(default=None, serialization_alias="connectionId")
    issues: tuple[Issue, ...] = ()


class RateLimit(BaseModel):
    """`client.rateLimit.reached|reset` (schema ClientRateLimitWebhook): the client's daily quota."""

    model_config = ConfigDict(frozen=True)

    daily_quota: int | None = None
    quota_remaining: int | None = None
    expires_at: float | None = None  # when the quota resets (`expiryDate`)


class Alert(BaseModel):
    """One Codat delivery, normalised across the three shapes; `body` keeps the raw bytes."""

    model_config = ConfigDict(frozen=True)

    delivery_id: str
    kind: AlertKind
    type: str
    shape: Shape
    company_id: str | None = None
    connection_id: str | None = None
    data_types: tuple[DataTypeStatus, ...] = ()
    generated_at: float | None = None
    rate_limit: RateLimit | None = None
    body: bytes = b""
    # When it was stored (set on alerts loaded for a job): a question Codat answered after this answers
    # the alert too (handlers/dataset_status.py). None for an alert built outside the store.
    received_at: float | None = None

    @property
    def data_type(self) -> str | None:
        return self.data_types[0].data_type if self.data_types else None

    @property
    def dataset_id(self) -> str | None:
        return self.data_types[0].dataset_id if self.data_types else None

    @property
    def dataset_status(self) -> str | None:
        return self.data_types[0].status if self.data_types else None


class Outcome(enum.StrEnum):
    """How a handler ended; the worker maps it onto the alert's status."""

    DONE = "done"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Context:
    """Exactly what a handler may touch, each with its real type (mypy strict checks handlers through it)."""

    store: AsyncEngine
    codat: CodatClient
    notifier: Notifier
    tracker: Tracker  # the push pipeline's: what follows a dataset's end, what a sync put in the books
    clock: Clock
    log: structlog.stdlib.BoundLogger
    attempt: int


Handler = Callable[[Alert, Context], Awaitable[Outcome]]


class Deps(Protocol):
    """What jobs need from the process: service.runtime.Runtime provides it (handlers get a Context)."""

    @property
    def engine(self) -> AsyncEngine: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def codat(self) -> CodatClient: ...
    @property
    def notifier(self) -> Notifier: ...
    @property
    def tracker(self) -> Tracker: ...
