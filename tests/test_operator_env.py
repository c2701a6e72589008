"""Operator commands in a fresh shell: `.relay-local.env` read under the environment, only the database
needed, no database created, a closed pipe ended quietly, readiness probes silent."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from service import local_env, migrate
from service.cli.common import CommandFailed, check_database_exists, load_settings_or_fail, readable
from service.db import create_engine
from tests.conftest import make_settings


def write_env(folder: Path, **values: str) -> Path:
    path = folder / local_env.FILE_NAME
    path.write_text("# a comment\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def test_the_file_is_found_in_the_folder_or_above_and_the_environment_wins(tmp_path: Path) -> None:
    write_env(tmp_path, RELAY_API_TOKEN="from-file-1", RELAY_CODAT_BASE_URL="http://127.0.0.1:8901")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    merged = local_env.with_local_env({"RELAY_API_TOKEN": "from-env-1"}, cwd=tmp_path / "sub" / "deeper")
    assert merged["RELAY_API_TOKEN"] == "from-env-1"
    assert merged["RELAY_CODAT_BASE_URL"] == "http://127.0.0.1:8901"
    assert local_env.with_local_env({local_env.PATH_VARIABLE: str(tmp_path / "none")}, cwd=tmp_path) == {
        local_env.PATH_VARIABLE: str(tmp_path / "none")}  # an explicit path that is not there: no file


def test_operator_commands_read_the_file_and_need_no_webhook_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's URL and key come from `make run`'s file, so `sync status` never asks api.codat.io."""
    write_env(tmp_path, RELAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/relay.db",
              RELAY_CODAT_BASE_URL="http://127.0.0.1:8901", RELAY_CODAT_API_KEY="sandbox-key",
              CODAT_RELAY_URL="http://127.0.0.1:8000")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for name in [n for n in __import__("os").environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    settings = load_settings_or_fail(operator=True)
    assert settings.codat_base_url == "http://127.0.0.1:8901"
    assert settings.codat_api_key is not None and settings.codat_api_key.get_secret_value() == "sandbox-key"
    assert settings.database_url.endswith("/relay.db") and not settings.webhook_auth_configured
    with pytest.raises(CommandFailed, match="RELAY_WEBHOOK_SECRETS"):
        load_settings_or_fail()  # serve/web/worker: the environment alone, webhook authentication required


def test_a_missing_sqlite_file_is_a_one_line_failure_and_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/absent.db"
    with pytest.raises(CommandFailed, match=re.escape(f"no database at {url}: start `make run`")):
        check_database_exists(make_settings(url))
    assert not (tmp_path / "absent.db").exists()


def test_people_read_yes_and_no() -> None:
    """`paused yes` from every command, never `True` from one and `yes` from another."""
    assert [readable(True), readable(False), readable(None), readable(3)] == ["yes", "no", "", "3"]


async def test_readiness_reads_the_revision_without_alembic_log_lines(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """/readyz is probed every few seconds: it must not log Alembic's two context lines each time."""
    engine = create_engine(make_settings(database_url))
    try:
        with caplog.at_level(logging.INFO, logger="alembic"):
            async with engine.connect() as conn:
                revision = await migrate.current_revision_quietly(conn)
    finally:
        await engine.dispose()
    assert revision == migrate.head_revision()
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
