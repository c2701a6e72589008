"""Server-side sessions of the Sync Health page: the one module that writes `ui_sessions`.

A session is its nonce; the table keeps the nonce's SHA-256 (a copy of the database is no key to a
session) and the expiry. Logging out deletes the row, so the cookie, however well signed, ends there.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import ui_sessions, writer


def _key(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


async def start(engine: AsyncEngine, nonce: str, now: float, expires_at: float) -> None:
    """Record a new session (and forget the expired ones, so the table holds only live sessions)."""
    async with writer(engine).begin() as conn:
        await conn.execute(ui_sessions.delete().where(ui_sessions.c.expires_at <= now))
        await conn.execute(ui_sessions.insert().values(id=_key(nonce), created_at=now, expires_at=expires_at))


async def is_live(engine: AsyncEngine, nonce: str, now: float) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(
            sa.select(sa.literal(1)).where(ui_sessions.c.id == _key(nonce), ui_sessions.c.expires_at > now)
        )
    return found is not None


async def end(engine: AsyncEngine, nonce: str) -> None:
    async with writer(engine).begin() as conn:
        await conn.execute(ui_sessions.delete().where(ui_sessions.c.id == _key(nonce)))
