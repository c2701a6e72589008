"""`make demo`: the whole of codat-relay in two minutes, narrated in the terminal.

Starts the Codat sandbox and codat-relay (`serve`, on a throw-away SQLite file, generated secrets) and
a staff-notification receiver that prints what it gets; creates the merchant's company in Codat (Codat
knows none until then); feeds orders, payments and transactions; makes the sandbox fail one dataset with
an error a re-push clears and one that needs a person; deletes the merchant's connection, feeds more,
reconnects. After each step it reads codat-relay's API and the
sandbox to show what codat-relay did, and waits (with a deadline) for what should happen: exit 0 only
when every step's outcome was seen, else exit 1 naming the step.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service.dev.demo_stack import Inbox, StepFailed, environment, free_port, process

T = TypeVar("T")
COMPANY_NAME = "Demo coffee shop"
ORDERS, PAYMENTS, TRANSACTIONS = "commerce-orders", "commerce-payments", "commerce-transactions"
DAY = "2026-03-02T"


def say(text: str) -> None:
    print(textwrap.fill(text, 100, initial_indent="   ", subsequent_indent="   "), flush=True)


def order(n: int, amount: float) -> dict[str, Any]:
    return {"id": f"order-{n}", "orderNumber": str(n), "currency": "GBP", "totalAmount": amount,
            "createdDate": f"{DAY}09:{n % 60:02d}:00Z", "sourceModifiedDate": f"{DAY}09:{n % 60:02d}:00Z"}  # fmt: skip


def payment(n: int, amount: float, currency: str = "GBP") -> dict[str, Any]:
    return {"id": f"payment-{n}", "amount": amount, "currency": currency, "type": "Card", "status": "Paid",
            "createdDate": f"{DAY}10:{n % 60:02d}:00Z", "dueDate": f"{DAY}10:{n % 60:02d}:00Z"}  # fmt: skip


def transaction(n: int, amount: float) -> dict[str, Any]:
    return {"id": f"txn-{n}", "totalAmount": amount, "currency": "GBP", "type": "Payment",
            "transactionSourceRef": {"id": f"payment-{n}", "type": "Payment"},
            "createdDate": f"{DAY}11:00:00Z"}  # fmt: skip


class Demo:
    """The running stack, seen the way an operator sees it: codat-relay's API and the sandbox's."""

    def __init__(self, relay: str, sandbox: str, env: dict[str, str], inbox: Inbox, deadline_s: float) -> None:
        self.relay, self.sandbox, self.inbox, self.deadline_s = relay, sandbox, inbox, deadline_s
        self.api = {"authorization": f"Bearer {env['RELAY_API_TOKEN']}"}
        self.admin = {"authorization": f"Bearer {env['RELAY_ADMIN_TOKEN']}"}
        self.http = httpx.Client(timeout=10)
        self.codat_auth = {"authorization": "Basic " + base64.b64encode(env["RELAY_CODAT_API_KEY"].encode()).decode()}
        self.company = ""

    def create_company(self, name: str) -> str:
        """Codat's own `POST /companies`: Codat (here the sandbox) issues the company's id."""
        answer = self.http.post(f"{self.sandbox}/companies", json={"name": name}, headers=self.codat_auth)
        if answer.status_code != 200:
            raise StepFailed(f"POST /companies answered {answer.status_code}: {answer.text}")
        self.company = str(answer.json()["id"])
        return self.company

    def put(self, data_type: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        short = data_type.removeprefix("commerce-")
        answer = self.http.put(f"{self.relay}/v1/companies/{self.company}/records/{short}", json={"records": items},
                               headers=self.api)  # fmt: skip
        if answer.status_code != 202:
            raise StepFailed(f"intake of {short} answered {answer.status_code}: {answer.text}")
        print(f"   PUT /v1/companies/{self.company}/records/{short} ({len(items)}) -> 202 {answer.text}", flush=True)
        return dict(answer.json())

    def view(self) -> dict[str, Any]:
        answer = self.http.get(f"{self.relay}/v1/companies/{self.company}", headers=self.admin)
        return dict(answer.json()) if answer.status_code == 200 else {}

    def states(self, data_type: str) -> dict[str, int]:
        return {k: v for k, v in self.view().get("records", {}).get(data_type, {}).items() if v}

    def alerts(self) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.relay}/v1/alerts", params={"companyId": self.company}, headers=self.admin)
        return list(answer.json()["results"])

    def sandbox_call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, f"{self.sandbox}/_sandbox{path}", **kwargs)
        answer.raise_for_status()
        return answer.json()

    def pushes(self, data_type: str) -> list[dict[str, Any]]:
        params = {"companyId": self.company, "dataType": data_type}
        return list(self.sandbox_call("GET", "/pushes", params=params)["results"])

    def wait(self, what: str, fetch: Callable[[], T], done: Callable[[T], bool]) -> T:
        """Poll until `done(fetch())`; StepFailed naming `what` and the last value at the deadline."""
        deadline = time.monotonic() + self.deadline_s
        while not done(value := fetch()):
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out waiting for {what}; last seen: {value!r}"[:600])
            time.sleep(0.1)
        return value

    def settled(self, data_type: str, **expected: int) -> None:
        self.wait(f"{data_type} to be {expected}", lambda: self.states(data_type), lambda s: s == expected)

    def datasets(self, data_type: str) -> list[dict[str, Any]]:
        return [d for d in reversed(self.view().get("recentDatasets", [])) if d["dataType"] == data_type]


def step(title: str) -> None:
    print(f"\n== {title} ", "=" * max(0, 96 - len(title)), sep="", flush=True)


def show_datasets(datasets: list[dict[str, Any]]) -> None:
    for d in datasets:
        error = f" — {d['errorMessage']}" if d.get("errorMessage") else ""
        print(f"   dataset {d['id'][:8]}… {d['dataType']:<22} {d['records']:>2} record(s)  {d['status']}{error}")


def feed_and_push(demo: Demo) -> None:
    step("1. The merchant's platform hands over orders, payments and transactions")
    say("Each PUT is stored durably and answered at once; codat-relay pushes to Codat in the background.")
    demo.put(ORDERS, [order(n, 4.5 + n) for n in (1001, 1002, 1003)])
    demo.put(PAYMENTS, [payment(n, 4.5 + n - 1000) for n in (1, 2)])
    demo.put(TRANSACTIONS, [transaction(n, 4.5 + n) for n in (1, 2)])
    demo.settled(ORDERS, accepted=3)
    demo.settled(PAYMENTS, accepted=2)
    demo.settled(TRANSACTIONS, accepted=2)
    say("Codat took all three data types; codat-relay followed each dataset to its end:")
    show_datasets(demo.datasets(ORDERS) + demo.datasets(PAYMENTS) + demo.datasets(TRANSACTIONS))


def repushable_failure(demo: Demo) -> None:
    step("2. Codat fails a dataset with FetchError (a re-push can clear it)")
    demo.sandbox_call("POST", "/script/dataset", json={"companyId": demo.company, "dataType": ORDERS,
                                                       "status": "FetchError", "times": 1})  # fmt: skip
    demo.put(ORDERS, [order(n, 6.0) for n in (1004, 1005)])
    demo.wait("a FetchError dataset", lambda: [d["status"] for d in demo.datasets(ORDERS)],
              lambda statuses: "FetchError" in statuses)  # fmt: skip
    say(
        "codat-relay learned that the dataset failed (from Codat's webhook or its own polling), checked "
        "it with Codat, and re-pushes its failed orders after a backoff (RELAY_REPUSH_BACKOFF_SECONDS) ..."
    )
    demo.settled(ORDERS, accepted=5)
    demo.wait("the re-push in Codat", lambda: demo.pushes(ORDERS), lambda ps: len(ps) == 3)
    show_datasets(demo.datasets(ORDERS)[-2:])
    say("RE-PUSH: the same two orders went again and Codat completed them. Nobody was paged: "
        f"staff notifications so far: {len(demo.inbox.received)}.")  # fmt: skip


def person_needed_failure(demo: Demo) -> None:
    step("3. Codat fails a dataset with ValidationError (a person must fix the data)")
    message = "Payment 'payment-3': currency 'XYZ' is not a valid ISO 4217 currency code"
    script = {"companyId": demo.company, "dataType": PAYMENTS, "status": "ValidationError", "errorMessage": message}
    demo.sandbox_call("POST", "/script/dataset", json=script)
    demo.put(PAYMENTS, [payment(3, 12.0, currency="XYZ")])
    demo.wait("a dataset_failed notification", demo.inbox.kinds, lambda k: "dataset_failed" in k)
    demo.settled(PAYMENTS, accepted=2, failed=1)
    show_datasets(demo.datasets(PAYMENTS)[-1:])
    say("NOT re-pushed: sending the same invalid payment again cannot succeed. Staff were told, with "
        "Codat's message and what to do, and the payment is kept as `failed` until it is corrected.")  # fmt: skip


def connection_deleted(demo: Demo) -> None:
    step("4. The merchant's connection is deleted in Codat")
    before = len(demo.pushes(ORDERS)) + len(demo.pushes(TRANSACTIONS))
    demo.sandbox_call("POST", f"/companies/{demo.company}/delete-connection")
    view = demo.wait("the company to be paused", demo.view, lambda v: v.get("paused") is True)
    demo.wait("a connection_deleted notification", demo.inbox.kinds, lambda k: "connection_deleted" in k)
    say(f"PAUSE: codat-relay paused pushing for {demo.company} (reason: {view['pauseReason']}) and told staff. "
        "The shop keeps trading; new records are accepted and wait:")  # fmt: skip
    demo.put(ORDERS, [order(n, 8.0) for n in (1006, 1007)])
    demo.put(TRANSACTIONS, [transaction(3, 12.0)])
    demo.settled(ORDERS, accepted=5, pending=2)
    demo.settled(TRANSACTIONS, accepted=2, pending=1)
    if (after := len(demo.pushes(ORDERS)) + len(demo.pushes(TRANSACTIONS))) != before:
        raise StepFailed(f"pushed while paused: {after - before} pushes reached the sandbox")
    say("Waiting: 2 orders and 1 transaction, pending. Nothing was pushed to the deleted connection.")


def reconnect(demo: Demo) -> None:
    step("5. The merchant reconnects")
    demo.sandbox_call("POST", f"/companies/{demo.company}/reconnect")
    demo.wait("the company to be resumed", demo.view, lambda v: v.get("paused") is False)
    demo.settled(ORDERS, accepted=7)
    demo.settled(TRANSACTIONS, accepted=3)
    say("RESUME: codat-relay saw the new connection, resumed the company and pushed the backlog:")
    show_datasets(demo.datasets(ORDERS)[-1:] + demo.datasets(TRANSACTIONS)[-1:])


def summary(demo: Demo) -> None:
    step("6. What codat-relay did, from its own API and from the sandbox")
    # The backlog's own alerts may still be in flight: wait for them rather than report a half-done state.
    alerts = demo.wait("every alert to be processed", demo.alerts,
                       lambda found: all(a["status"] in ("done", "ignored") for a in found))  # fmt: skip
    say(f"GET /v1/alerts?companyId={demo.company}: {len(alerts)} Codat alerts received and processed:")
    for a in reversed(alerts):
        print(f"   {a['receivedAt']}  {a['kind']:<20} {a['type']:<40} {a['status']}")
    if any(a["status"] == "ignored" for a in alerts):
        say("(ignored: an event codat-relay does not act on, like company.created, or a dataset's end it already "
            "knew from polling Codat: nothing left to do.)")
    with demo.inbox.lock:  # a problem that cleared (the reconnection) is told again, as resolved
        told = [n["kind"] + (" (resolved)" if n.get("state") == "resolved" else "") for n in demo.inbox.received]
    say(f"Staff notifications: {', '.join(told)}.")
    say(f"GET /v1/companies/{demo.company}: records by state: "
        + "; ".join(f"{t}: {demo.states(t)}" for t in (ORDERS, PAYMENTS, TRANSACTIONS)))  # fmt: skip
    breaches = demo.sandbox_call("GET", "/breaches")["results"]
    if breaches:
        raise StepFailed(f"the sandbox saw breaches of Codat's push rules: {breaches}"[:600])
    say("GET /_sandbox/breaches: none — no concurrent pushes, no oversized pushes, nothing re-sent after a sync.")


def run(pace: float, tmp: Path, step_deadline_s: float | None = None) -> None:
    relay_port, sandbox_port, inbox = free_port(), free_port(), Inbox()
    env = environment(tmp, relay_port, sandbox_port, inbox.url, pace)
    relay, sandbox = f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{sandbox_port}"
    step("0. Starting the Codat sandbox and codat-relay")
    sandbox_args = ["sandbox", "--port", str(sandbox_port), "--pace-seconds", str(pace), "--webhook-shape",
                    "envelope", "--webhook-url", f"{relay}/webhooks/codat", "--webhook-secret",
                    env["RELAY_WEBHOOK_SECRETS"], "--api-key", env["RELAY_CODAT_API_KEY"]]  # fmt: skip
    with process(sandbox_args, env, tmp / "sandbox.log", f"{sandbox}/_sandbox/config"), \
            process(["serve"], env, tmp / "relay.log", f"{relay}/readyz"):  # fmt: skip
        say(f"Codat sandbox (a local stand-in for api.codat.io) at {sandbox}; each dataset takes {pace:g} s.")
        say(f"codat-relay at {relay} on a throw-away SQLite database ({tmp / 'relay.db'}); "
            f"staff notifications go to a receiver in this terminal ({inbox.url}).")  # fmt: skip
        demo = Demo(relay, sandbox, env, inbox, deadline_s=step_deadline_s or 20 + 20 * pace)
        say(f"POST {sandbox}/companies {{\"name\": \"{COMPANY_NAME}\"}}: Codat knows a merchant only once it is "
            f"created; its company id is {demo.create_company(COMPANY_NAME)}.")  # fmt: skip
        for act in (feed_and_push, repushable_failure, person_needed_failure, connection_deleted, reconnect,
                    summary):  # fmt: skip
            act(demo)
        step("Done. Stopping codat-relay and the sandbox")
    inbox.server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--pace", type=float, default=1.0, help="seconds a sandbox dataset takes (default 1)")
    parser.add_argument("--step-deadline", type=float, metavar="SECONDS",
                        help="how long to wait for each outcome (default 20 s + 20 * pace)")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codat-relay-demo-") as tmp:
        try:
            run(args.pace, Path(tmp), args.step_deadline)
        except StepFailed as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            log = Path(tmp) / "relay.log"
            if log.exists():
                print("last lines of codat-relay's log:\n" + "\n".join(log.read_text().splitlines()[-15:]),
                      file=sys.stderr)  # fmt: skip
            return 1
    print(f"\nThe whole demo took {time.monotonic() - started:.0f} s: every step's outcome was observed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
