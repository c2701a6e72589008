"""The session's log scan (issue 8): every log the reliability suite wrote, searched for every secret it used.

Each reliability test's directory is registered (tests/reliability/conftest.py); relay and sandbox
processes write their logs there, and in-process apps (`inprocess.app_in_thread`) log there too, rendered
and redacted as the service does. At the end of the session every `*.log` file under those directories
is searched for the test secrets, tokens, the Codat API key (raw and as its Basic credential) and the
Authorization values, plus whatever secrets a test made up for itself (`EXTRA_NEEDLES`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ADMIN_TOKEN, API_TOKEN, TEST_AUTH_HEADER, TEST_SECRET
from tests.integration.e2e import CODAT_API_KEY

DIRS: list[Path] = []  # every reliability test's tmp_path, in run order
EXTRA_NEEDLES: dict[str, str] = {}  # name → value, from tests with secrets of their own
current_dir: Path | None = None  # the running test's directory: where in-process apps log


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def needles() -> dict[str, str]:
    """name → a value that must appear in no log line."""
    key = TEST_SECRET.removeprefix("whsec_")
    legacy = TEST_AUTH_HEADER.removeprefix("Bearer ")
    found = {
        "webhook_secret": key,  # covers the whsec_ form too
        "webhook_key_hex": base64.b64decode(key).hex(),
        "legacy_authorization": legacy,
        "api_token": API_TOKEN,
        "api_token_base64": b64(API_TOKEN),  # as a careless `Basic` credential would carry it
        "admin_token": ADMIN_TOKEN,
        "admin_token_base64": b64(ADMIN_TOKEN),
        "codat_api_key": CODAT_API_KEY,
        "codat_api_key_base64": b64(CODAT_API_KEY),  # the Authorization value sent to Codat
    }
    return {**found, **EXTRA_NEEDLES}


@dataclass
class Scan:
    files: int = 0
    lines: int = 0
    bytes: int = 0
    leaks: dict[str, list[str]] = field(default_factory=dict)  # needle name → up to 3 "file: line" excerpts


def log_files() -> list[Path]:
    seen: dict[Path, None] = {}
    for directory in DIRS:
        for path in sorted(directory.rglob("*.log")):
            seen.setdefault(path, None)
    return list(seen)


def scan(files: list[Path], searched: dict[str, str]) -> Scan:
    result = Scan()
    for path in files:
        text = path.read_text(errors="replace")
        result.files += 1
        result.bytes += len(text)
        for line in text.splitlines():
            result.lines += 1
            for name, value in searched.items():
                if value in line:
                    found = result.leaks.setdefault(name, [])
                    if len(found) < 3:
                        found.append(f"{path.parent.name}/{path.name}: {line[:300]}")
    return result
