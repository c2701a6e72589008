"""Alembic environment: runs the migrations over the service's own async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import behind_pgbouncer, metadata, pgbouncer_driver_args

target_metadata = metadata


MIGRATION_LOCK_ID = 0x636F646174  # "codat": serialises concurrent `migrate`/`serve` starts on PostgreSQL


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held to the end of the transaction: a second migrator waits, then finds nothing to do.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    # Behind PgBouncer's transaction pooling no prepared statement may outlive its transaction.
    connect_args = pgbouncer_driver_args() if url and behind_pgbouncer(url) else {}
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async(context.config.get_main_option("sqlalchemy.url") or ""))
