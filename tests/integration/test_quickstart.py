"""The README's Quickstart, run verbatim against a `make run` process (sandbox beside it) in a fresh folder.

Each shell block of the README is taken as written, between its `<!-- quickstart:NAME -->` marker and the
block's end, and run by bash; the variables an earlier block set are set again by its own lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.dev.quickstart import failure_block, push_block
from tests.integration.harness import ROOT, free_port, stop, wait_http

README = ROOT / "README.md"
DEADLINE_S = 60.0


def blocks() -> dict[str, str]:
    found = re.findall(r"<!-- quickstart:(\w+) -->\n```sh\n(.*?)\n```", README.read_text(), re.S)
    return dict(found)


def test_the_readme_holds_the_banners_commands() -> None:
    """The README's blocks are the ones `make run` prints (service/dev/quickstart.py), nothing edited by hand."""
    readme = blocks()
    assert readme["push"] == push_block()
    assert readme["fail"] + "\n" + readme["delete"] == failure_block()


def run_block(name: str, cwd: Path, env: dict[str, str]) -> str:
    text = blocks()[name]
    # The variables earlier blocks set (RELAY=…, TOKEN=…), as the user's shell still holds them.
    earlier = "\n".join(line for line in "\n".join(blocks().values()).splitlines() if re.match(r"^[A-Z]+=\$\(", line))
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", f"{earlier}\n{text}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, f"{name}: {done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for(what: str, read: Callable[[], Any], ok: Callable[[Any], bool]) -> Any:
    deadline, value = time.monotonic() + DEADLINE_S, None
    while time.monotonic() < deadline:
        value = read()
        if ok(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {value!r} after {DEADLINE_S} s")


def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    """Three records accepted; the scripted ValidationError and the deleted connection show as the README says."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the README's `.venv/bin/codat-relay`
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "CODAT_SANDBOX_"))}
    port, sandbox_port = free_port(), free_port()
    env.update(RELAY_PORT=str(port), CODAT_SANDBOX_PORT=str(sandbox_port), RELAY_LOG_LEVEL="warning")
    with (tmp_path / "make-run.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "service.dev.local_run"], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    shell_env = {k: v for k, v in env.items() if k not in ("RELAY_PORT", "CODAT_SANDBOX_PORT", "RELAY_LOG_LEVEL")}
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        wait_for("the banner", lambda: (tmp_path / "make-run.log").read_text(), lambda out: "Quickstart" in out)
        admin = {"authorization": "Bearer " + re.findall(r"^RELAY_ADMIN_TOKEN=(.*)$",
                                                          (tmp_path / ".relay-local.env").read_text(), re.M)[0]}

        def view() -> Any:
            return httpx.get(f"http://127.0.0.1:{port}/v1/companies/quickstart-co", headers=admin).json()

        answers = [json.loads(line) for line in run_block("push", tmp_path, shell_env).splitlines()]
        assert [a["accepted"] for a in answers] == [1, 1, 1]
        wait_for("the three records accepted by Codat", view, lambda v: all(
            c.get("accepted", 0) + c.get("synced", 0) == 1 for c in v.get("records", {}).values()))
        run_block("fail", tmp_path, shell_env)
        failed = wait_for("the ValidationError on the company", view,
                          lambda v: any(p["kind"] == "dataset_failed" for p in v.get("problems", [])))
        assert failed["failing"] and failed["records"]["commerce-orders"]["failed"] == 1
        shown = run_block("delete", tmp_path, shell_env)
        assert "quickstart-co" in shown and "ValidationError" in shown
        paused = wait_for("the company paused", view, lambda v: v.get("paused") is True)
        assert paused["pauseReason"] == "connection_deleted"
    finally:
        stop(proc, signal.SIGTERM)
