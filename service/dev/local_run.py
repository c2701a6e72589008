"""`make run`: a complete local instance — never an unauthenticated one.

Generates a `whsec_` signing secret and admin/API tokens once, keeps them in a git-ignored file and
reuses them; with no RELAY_CODAT_API_KEY it starts the sandbox beside the service and points the
service at it. Whatever RELAY_* variables are set in the environment win.

Webhooks are wired the way a user wires them against Codat, never by a shortcut: `codat-relay subscribe`
creates the relay's webhook consumers in the sandbox, and each consumer's signing secret, read from the
sandbox's Portal view (`/_sandbox/consumers`), is added to the relay's RELAY_WEBHOOK_SECRETS.

Both processes must really be serving before the banner is printed: a port another program holds
stops `make run` with exit 1 and a line naming the port, instead of serving beside a stranger (pushes
would go to whatever holds the sandbox's port). The file also records where this instance serves
(database, Codat URL and the sandbox's key), so that `codat-relay` commands in another shell use them.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from service import local_env
from service.dev.quickstart import quickstart_text
from service.samples import SAMPLE_COMPANY
from service.sandbox.config import DEFAULT_PORT as SANDBOX_PORT

LOCAL_ENV_FILE = Path(os.environ.get(local_env.PATH_VARIABLE, local_env.FILE_NAME))
SANDBOX_PORT_VARIABLE = "CODAT_SANDBOX_PORT"  # the sandbox's namespace: the relay refuses unknown RELAY_ names
SANDBOX_KEY = "sandbox-key"
DEFAULT_DATABASE = "sqlite+aiosqlite:///./codat-relay.db"
START_DEADLINE_S = 60.0  # a first start migrates a fresh database; a slow shared machine takes a while
# Codat knows no company until it is created: `make run` creates the quickstart's company in the sandbox
# on every start (the sandbox keeps nothing), so records stored under it by an earlier run still reach Codat.
LOCAL_COMPANY_ID = SAMPLE_COMPANY
# Its configured sync start date (Codat's, set when a merchant onboards): before the samples' 2025 dates,
# so that "Sync latest" takes them (the sandbox syncs records dated from that start).
LOCAL_COMPANY_SYNC_START = "2025-01-01T00:00:00Z"
LOCAL_COMPANY_NAME = "Quickstart Coffee"  # Codat's name of it: the page's search finds it by name too
# Codat syncs it daily at 02:00 London time: the page shows that next sync, and codat-relay pushes before it.
LOCAL_COMPANY_SCHEDULE = {"selectedFrequency": "Daily", "syncHour": 2, "timeZone": "Europe/London"}


class StartFailed(Exception):
    """One line saying which process could not start, and why."""


def generated_values() -> dict[str, str]:
    return {
        "RELAY_WEBHOOK_SECRETS": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "RELAY_ADMIN_TOKEN": secrets.token_urlsafe(24),
        "RELAY_API_TOKEN": secrets.token_urlsafe(24),
    }


def load_or_create(path: Path) -> dict[str, str]:
    """The generated secrets, made once and kept (the instance lines of the file are rewritten each start)."""
    kept = local_env.read(path) if path.exists() else {}
    generated = {name: kept[name] for name in local_env.GENERATED if kept.get(name)}
    if len(generated) < len(local_env.GENERATED):
        generated = {**generated_values(), **generated}
    return generated


def absolute_database_url(url: str) -> str:
    """An SQLite path made absolute, so that the CLI finds the same file from any folder."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_serving(name: str, url: str, proc: subprocess.Popen[bytes], deadline_s: float = START_DEADLINE_S) -> None:
    """Until `url` answers below 500 while `proc` still runs; StartFailed if it exits or never answers."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartFailed(f"{name} exited with status {proc.returncode} before serving (see its lines above)")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                if proc.poll() is None:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise StartFailed(f"{name} did not answer {url} within {deadline_s:.0f} s")


def banner(env: Mapping[str, str], sandbox: bool) -> str:
    host, port = env.get("RELAY_HOST", "127.0.0.1"), env.get("RELAY_PORT", "8000")
    base = f"http://{host}:{port}"
    lines = [
        "=" * 72,
        f"codat-relay local instance at {base}  (serving: web + workers, database {env['RELAY_DATABASE_URL']})",
        f"  Sync Health page       : {base}/ui   (sign in with the admin token)",
        f"  API docs               : {base}/docs",
        f"  webhook signing secret : {env['RELAY_WEBHOOK_SECRETS'].split(',')[0]}",
        f"  admin token            : {env['RELAY_ADMIN_TOKEN']}",
        f"  intake API token       : {env['RELAY_API_TOKEN']}",
        f"  (kept in {LOCAL_ENV_FILE}; environment variables override them; `codat-relay` commands read it too)",
    ]
    if sandbox:
        lines += [
            "",
            "!! NO RELAY_CODAT_API_KEY: talking to the LOCAL CODAT SANDBOX, not to Codat !!",
            f"!! sandbox serving at {env['RELAY_CODAT_BASE_URL']} ({SANDBOX_PORT_VARIABLE} or --sandbox-port moves it)",
            "!! it sends its webhooks to this instance",
            f"!! Codat knows only companies created in it: {LOCAL_COMPANY_ID} is; add others with",
            f"!!   curl -X POST {env['RELAY_CODAT_BASE_URL']}/_sandbox/companies -d '{{\"id\": \"…\"}}'",
        ]
    else:
        lines += ["", f"Codat API: {env.get('RELAY_CODAT_BASE_URL', 'https://api.codat.io')} (no sandbox started)"]
    lines += ["", quickstart_text(sandbox=sandbox)]
    return "\n".join([*lines, "=" * 72])


def create_company(sandbox_url: str) -> None:
    """The quickstart's company, created in the sandbox (Codat answers 404 for a company never created)."""
    try:
        body = {"id": LOCAL_COMPANY_ID, "name": LOCAL_COMPANY_NAME, "syncStartDate": LOCAL_COMPANY_SYNC_START}
        answer = httpx.post(f"{sandbox_url}/_sandbox/companies", json=body, timeout=5)
        answer.raise_for_status()
        # Configured as Codat's sync flow would: the page shows its next sync, and the sandbox runs it.
        schedule = httpx.post(f"{sandbox_url}/_sandbox/companies/{LOCAL_COMPANY_ID}/schedule",
                              json=LOCAL_COMPANY_SCHEDULE, timeout=5)  # fmt: skip
        schedule.raise_for_status()
    except httpx.HTTPError as exc:
        raise StartFailed(f"the sandbox did not create the company {LOCAL_COMPANY_ID}: {exc}") from None


def _sandbox_port(argv_port: int | None) -> int:
    if argv_port is not None:
        return argv_port
    raw = os.environ.get(SANDBOX_PORT_VARIABLE, str(SANDBOX_PORT))
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise StartFailed(f"{SANDBOX_PORT_VARIABLE}: must be a port number (1-65535), not {raw!r}")
    return int(raw)


def _subscribe(env: dict[str, str]) -> list[str]:
    """Run `codat-relay subscribe` against the sandbox, as a user would; the consumers' signing secrets."""
    relay_env = {k: v for k, v in env.items() if k != SANDBOX_PORT_VARIABLE}
    done = subprocess.run([sys.executable, "-m", "service.cli", "subscribe"], env=relay_env, check=False)
    if done.returncode != 0:
        raise StartFailed(f"`codat-relay subscribe` against the sandbox exited with status {done.returncode}")
    portal = httpx.get(f"{env['RELAY_CODAT_BASE_URL']}/_sandbox/consumers", timeout=10.0).json()["results"]
    return [c["signingSecret"] for c in portal if c["url"].startswith(env["RELAY_PUBLIC_URL"])]


def _start(env: dict[str, str], sandbox_port: int | None, children: list[subprocess.Popen[bytes]]) -> bool:
    """Start the sandbox (if wanted) and the service; True when the sandbox runs. StartFailed if either cannot."""
    use_sandbox = not os.environ.get("RELAY_CODAT_API_KEY")
    host, port = env.get("RELAY_HOST", "127.0.0.1"), int(env.get("RELAY_PORT", "8000"))
    env.setdefault("RELAY_PUBLIC_URL", f"http://{host}:{port}")
    if use_sandbox:
        if not port_free("127.0.0.1", sandbox_port or 0):
            raise StartFailed(f"the sandbox's port {sandbox_port} is in use: stop whatever holds it, or choose "
                              f"another with {SANDBOX_PORT_VARIABLE}=8901 make run")  # fmt: skip
        env["RELAY_CODAT_BASE_URL"] = f"http://127.0.0.1:{sandbox_port}"
        env["RELAY_CODAT_API_KEY"] = SANDBOX_KEY
    if not port_free(host, port):
        raise StartFailed(f"port {port} on {host} is in use: stop whatever holds it, or set RELAY_PORT")
    if use_sandbox:
        # No CODAT_SANDBOX_WEBHOOK_URL: deliveries go to the consumers `subscribe` creates below. The secret
        # only satisfies the sandbox's config check for signed shapes; each consumer signs with its own.
        sandbox_env = {
            **{k: v for k, v in env.items() if k != SANDBOX_PORT_VARIABLE},
            "CODAT_SANDBOX_WEBHOOK_SECRET": env["RELAY_WEBHOOK_SECRETS"].split(",")[0],
            "CODAT_SANDBOX_WEBHOOK_SHAPE": env.get("CODAT_SANDBOX_WEBHOOK_SHAPE", "envelope"),
            "CODAT_SANDBOX_API_KEY": SANDBOX_KEY,  # the sandbox checks the key the relay sends
        }
        cmd = [sys.executable, "-m", "service.cli", "sandbox", "--port", str(sandbox_port)]
        children.append(subprocess.Popen(cmd, env=sandbox_env))  # noqa: S603 - our own CLI
        wait_serving("the sandbox", f"{env['RELAY_CODAT_BASE_URL']}/_sandbox/config", children[-1])
        create_company(env["RELAY_CODAT_BASE_URL"])
        env["RELAY_WEBHOOK_SECRETS"] = ",".join([env["RELAY_WEBHOOK_SECRETS"], *_subscribe(env)])
    relay_env = {k: v for k, v in env.items() if k != SANDBOX_PORT_VARIABLE}
    children.append(subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=relay_env))
    wait_serving("codat-relay", f"http://{host}:{port}/readyz", children[-1])
    return use_sandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description="a complete local codat-relay instance")
    parser.add_argument("--sandbox-port", type=int, default=None,
                        help=f"the sandbox's port (default ${SANDBOX_PORT_VARIABLE}, else {SANDBOX_PORT})")  # fmt: skip
    args = parser.parse_args(argv)
    generated = load_or_create(LOCAL_ENV_FILE)
    local_env.write(LOCAL_ENV_FILE, generated, {})  # the secrets are kept even if start-up fails
    env = {**generated, **os.environ}
    env["RELAY_DATABASE_URL"] = absolute_database_url(env.get("RELAY_DATABASE_URL", DEFAULT_DATABASE))
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []  # the signal asked to stop with: a sandbox exiting then is no failure

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        use_sandbox = _start(env, _sandbox_port(args.sandbox_port), children)
    except StartFailed as exc:
        _stop(children)
        print(f"make run: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    host, port = env.get("RELAY_HOST", "127.0.0.1"), env.get("RELAY_PORT", "8000")
    # CODAT_RELAY_URL is no setting (no RELAY_ prefix): the quickstart's commands read it from the file.
    instance = {"CODAT_RELAY_URL": f"http://{host}:{port}", "RELAY_DATABASE_URL": env["RELAY_DATABASE_URL"],
                "RELAY_PUBLIC_URL": env["RELAY_PUBLIC_URL"]}  # fmt: skip
    if use_sandbox:  # so that `codat-relay sync status` in another shell asks this sandbox, not api.codat.io
        instance.update(RELAY_CODAT_BASE_URL=env["RELAY_CODAT_BASE_URL"], RELAY_CODAT_API_KEY=SANDBOX_KEY)
    local_env.write(LOCAL_ENV_FILE, generated, instance)
    print(banner(env, use_sandbox), flush=True)
    code = _watch(children, stopping)
    _stop(children)
    return code


def _watch(children: list[subprocess.Popen[bytes]], stopping: list[int]) -> int:
    """Until the service exits; a sandbox that dies meanwhile stops everything, loudly."""
    relay = children[-1]
    while relay.poll() is None:
        for child in children[:-1]:
            if child.poll() is not None and not stopping:
                print(f"make run: the sandbox exited with status {child.returncode}: stopping", file=sys.stderr)
                relay.terminate()
                relay.wait(30)
                return 1
        time.sleep(0.5)
    return relay.returncode


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
