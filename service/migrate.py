"""Apply Alembic migrations programmatically (`codat-relay migrate`, `serve` start, tests)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially; URLs may carry %-escapes.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking: runs its own event loop, so call it outside one (or via `asyncio.to_thread`)."""
    command.upgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """For `run_sync` on a live connection."""
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision_quietly(conn: AsyncConnection) -> str | None:
    """The revision, read straight from Alembic's table: `/readyz` is probed every few seconds, and
    Alembic's MigrationContext logs two lines ("Context impl …", "Will assume … DDL") each time it is made."""
    if not await conn.run_sync(lambda sync: sa.inspect(sync).has_table(VERSION_TABLE)):
        return None
    versions = (await conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars().all()  # noqa: S608 - a constant
    return versions[0] if len(versions) == 1 else None
