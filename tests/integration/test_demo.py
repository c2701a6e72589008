"""`make demo` runs to completion in CI-like conditions: `python -m service.dev.demo --pace 0.2`, with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.harness import ROOT

DEADLINE_S = 120


def test_demo_runs_to_completion_and_narrates_what_codat_relay_did() -> None:
    """Exit 0; the narration tells of the re-push, the pause, the resume and the staff notifications."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | {"CI": "true"}
    result = subprocess.run([sys.executable, "-m", "service.dev.demo", "--pace", "0.2"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE_S)  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, f"{out[-3000:]}\n{result.stderr[-3000:]}"
    assert "RE-PUSH: the same two orders went again" in out
    assert "PAUSE: codat-relay paused pushing" in out and "RESUME:" in out
    assert "STAFF NOTIFIED [warning] dataset_failed" in out and "not a valid ISO 4217" in out
    assert "STAFF NOTIFIED [critical] connection_deleted" in out
    assert "GET /_sandbox/breaches: none" in out and "every step's outcome was observed" in out


def test_demo_exits_1_naming_the_failed_step() -> None:
    """A step whose outcome cannot be seen in time: exit 1 with the step's expectation on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    # No dataset ends within a 3 s deadline when each takes 600 s: the very first wait must fail.
    result = subprocess.run([sys.executable, "-m", "service.dev.demo", "--pace", "600", "--step-deadline", "3"],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=DEADLINE_S)  # fmt: skip
    assert result.returncode == 1
    assert "DEMO FAILED: timed out waiting for commerce-orders to be {'accepted': 3}" in result.stderr
