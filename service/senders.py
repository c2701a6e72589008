"""The four ways staff are told: a generic JSON webhook, Slack, e-mail over SMTP, and the log."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx
import structlog

from service.settings import Settings

SEND_TIMEOUT_S = 10.0
SMTP_TIMEOUT_S = 15.0
log = structlog.get_logger("service.senders")


class Sender(Protocol):
    async def send(self, message: dict[str, Any]) -> None: ...


class WebhookSender:
    """The generic target gets JSON: encoding escapes every value, so nothing in one can change its shape."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client, self._url = client, url

    async def send(self, message: dict[str, Any]) -> None:
        response = await self._client.post(self._url, json=message, timeout=SEND_TIMEOUT_S)
        response.raise_for_status()  # any non-2xx: the job retries with backoff


# Slack reads `<…>` as a mention (`<!channel>`) or a link (`<https://…|label>`); its escaping rule is
# exactly these three characters (api.slack.com "Escaping text"). Everything a notification carries
# may come from outside (company ids, Codat's error messages), so every value goes through it.
SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Line breaks and other control characters would let a value start lines of its own (a fake bullet).
_CONTROL = {code: " " for code in (*range(0x20), 0x7F, 0x2028, 0x2029)}


def slack_escape(value: object) -> str:
    """`value` as inert Slack text: no mention, no link, no line of its own."""
    return str(value).translate(_CONTROL).translate(SLACK_ESCAPES)


def _slack_code(value: object) -> str:
    # A backtick would end the code span early; Slack has no escape for it inside one.
    return "`" + slack_escape(value).replace("`", "'") + "`"


def slack_text(message: dict[str, Any]) -> str:
    icon = ":rotating_light:" if message["severity"] == "critical" else ":warning:"
    if message.get("state") == "resolved":
        icon = ":white_check_mark:"
    where = " · ".join(f"{k} {_slack_code(message[k])}" for k in ("companyId", "dataType", "datasetId")
                       if message.get(k))  # fmt: skip
    details = "\n".join(f"• {slack_escape(k)}: {slack_escape(v)}" for k, v in (message.get("details") or {}).items())
    kind, summary = slack_escape(message["kind"]), slack_escape(message["summary"])
    return f"{icon} *{kind}* — {summary}\n{where}\n{details}".strip()


class SlackSender:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client, self._url = client, url

    async def send(self, message: dict[str, Any]) -> None:
        response = await self._client.post(self._url, json={"text": slack_text(message)}, timeout=SEND_TIMEOUT_S)
        response.raise_for_status()


def one_line(value: object) -> str:
    """A value on one line of a plain-text mail: a line break in it cannot forge lines (or headers)."""
    return str(value).translate(_CONTROL)


def mail_text(message: dict[str, Any]) -> str:
    lines = [one_line(message["summary"]), ""]
    lines += [f"{k}: {one_line(message[k])}"
              for k in ("kind", "severity", "state", "companyId", "dataType", "datasetId", "occurredAt")
              if k in message]  # fmt: skip
    lines += ["", *(f"{one_line(k)}: {one_line(v)}" for k, v in (message.get("details") or {}).items())]
    return "\n".join(lines)


class EmailSender:
    """SMTP in a thread (smtplib is blocking): `smtp://user:pass@host:port` with STARTTLS when offered,
    or `smtps://` for TLS from the first byte."""

    def __init__(self, smtp_url: str, to: str) -> None:
        parts = urlsplit(smtp_url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("RELAY_SMTP_URL must be smtp://… or smtps://…")
        self._tls = parts.scheme == "smtps"
        self._host, self._port = parts.hostname, parts.port or (465 if self._tls else 25)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._to = [addr.strip() for addr in to.split(",") if addr.strip()]
        self._from = self._user if self._user and "@" in self._user else f"codat-relay@{socket.gethostname()}"

    def __repr__(self) -> str:  # never the password
        return f"EmailSender(host={self._host!r}, port={self._port}, to={self._to!r})"

    async def send(self, message: dict[str, Any]) -> None:
        mail = EmailMessage()
        # A line break in a header value is refused by `email` (the job would fail on every retry).
        subject = f"[codat-relay] {message['severity']}: {message['kind']} — {message['summary']}"
        mail["Subject"] = one_line(subject)[:200]
        mail["From"], mail["To"] = self._from, ", ".join(self._to)
        mail.set_content(mail_text(message))
        await asyncio.to_thread(self._deliver, mail)

    def _deliver(self, mail: EmailMessage) -> None:
        factory = smtplib.SMTP_SSL if self._tls else smtplib.SMTP
        with factory(self._host, self._port, timeout=SMTP_TIMEOUT_S) as smtp:
            if not self._tls and smtp.has_extn("starttls"):
                smtp.starttls()
            if self._user and self._password:
                smtp.login(self._user, self._password)
            smtp.send_message(mail)


class LogSender:
    async def send(self, message: dict[str, Any]) -> None:
        log.warning("staff_notification", **{k: v for k, v in message.items() if k != "details"},
                    details=message.get("details"))


def build_senders(settings: Settings, client: httpx.AsyncClient) -> dict[str, Sender]:
    """Every configured sender, plus the log, which always hears everything."""
    senders: dict[str, Sender] = {"log": LogSender()}
    if settings.notify_webhook_url is not None:
        senders["webhook"] = WebhookSender(client, settings.notify_webhook_url.get_secret_value())
    if settings.notify_slack_webhook_url is not None:
        senders["slack"] = SlackSender(client, settings.notify_slack_webhook_url.get_secret_value())
    if settings.notify_email_to and settings.smtp_url is not None:
        senders["email"] = EmailSender(settings.smtp_url.get_secret_value(), settings.notify_email_to)
    return senders
