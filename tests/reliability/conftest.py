"""The reliability suite's session-wide log scan: no secret in any log any of its tests produced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import logscan
from tests.reliability.common import report


@pytest.fixture(scope="session")
def session_log_scan() -> Iterator[None]:
    """After the last reliability test: scan every log the suite wrote; any secret found fails the run."""
    yield
    if not logscan.DIRS:
        return
    searched = logscan.needles()
    result = logscan.scan(logscan.log_files(), searched)
    report("security-log-scan-all", {
        "tests": len(logscan.DIRS), "files": result.files, "lines": result.lines, "bytes": result.bytes,
        "secrets_searched": len(searched), "leaks": len(result.leaks),
    })  # fmt: skip
    if result.leaks:
        pytest.fail("secrets found in the suite's logs:\n" + json.dumps(result.leaks, indent=1), pytrace=False)


@pytest.fixture(autouse=True)
def logs_of_this_test(tmp_path: Path, session_log_scan: None) -> Iterator[None]:
    """Register the test's directory: its relay, sandbox and in-process logs are scanned at the end."""
    logscan.DIRS.append(tmp_path)
    logscan.current_dir = tmp_path
    yield
    logscan.current_dir = None
