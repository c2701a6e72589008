"""Shared fixtures: throw-away databases on both backends, settings built from literals.

Every test that takes `database_url` runs twice, on SQLite and on PostgreSQL. Each test gets its own
database: a copy of a migrated template (a file copy on SQLite, `CREATE DATABASE … TEMPLATE` on
PostgreSQL), dropped afterwards, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service import migrate
from service.db import create_engine
from service.settings import Settings

# Codat's OpenAPI specs live in shared/ beside the repository (read-only reference data).
SPECS_DIR = next(
    (p for p in (Path(__file__).resolve().parents[2] / "shared" / "codat" / "specs",
                 Path("/work/shared/codat/specs")) if p.is_dir()),
    Path(__file__).resolve().parents[2] / "shared" / "codat" / "specs",
)
POSTGRES_URL = os.environ.get("RELAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TEST_AUTH_HEADER = "Bearer legacy-shared-value-123"
API_TOKEN = "test-api-token"
ADMIN_TOKEN = "test-admin-token"


def _dsn(url: str, database: str | None = None) -> str:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    if database is not None:
        dsn = dsn.rsplit("/", 1)[0] + "/" + database
    return dsn


def _admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(_dsn(POSTGRES_URL), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres_available() -> bool:
    try:
        _admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    if not postgres_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} (CI never skips it)")
        pytest.skip("PostgreSQL is not reachable")
    name = f"relay_tmpl_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    migrate.upgrade(POSTGRES_URL.rsplit("/", 1)[0] + "/" + name)
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def fresh_postgres(template: str) -> tuple[str, str]:
    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name, POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each backend, private to this test."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "relay.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    name, url = fresh_postgres(request.getfixturevalue("postgres_template"))
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A migrated, empty PostgreSQL database (for tests that only make sense on PostgreSQL)."""
    name, url = fresh_postgres(postgres_template)
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str = "sqlite+aiosqlite:///:memory:", **overrides: object) -> Settings:
    """Settings from literals: the environment of the test run never leaks in."""
    values: dict[str, object] = {
        "database_url": database_url,
        "webhook_secrets": TEST_SECRET,
        "webhook_auth_header": TEST_AUTH_HEADER,
        "api_token": API_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "log_format": "json",
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@asynccontextmanager
async def engine_for(database_url: str, **overrides: object) -> AsyncIterator[AsyncEngine]:
    """The relay's engine on a test database (settings from `make_settings`), disposed afterwards."""
    engine = create_engine(make_settings(database_url, **overrides))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The relay's engine on this test's database, on each backend."""
    async with engine_for(database_url) as created:
        yield created
