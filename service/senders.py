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
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client, self._url = client, url

    async def send(self, message: dict[str, Any]) -> None:
        response = await self._client.post(self._url, json=message, timeout=SEND_TIMEOUT_S)
        response.raise_for_status()  # any non-2xx: the job retries with backoff


def slack_text(message: dict[str, Any]) -> str:
    icon = ":rotating_light:" if message["severity"] == "critical" else ":warning:"
    where = " · ".join(f"{k} `{message[k]}`" for k in ("companyId", "dataType", "datasetId") if message.get(k))
    details = "\n".join(f"• {k}: {v}" for k, v in (message.get("details") or {}).items())
    return f"{icon} *{message['kind']}* — {message['summary']}\n{where}\n{details}".strip()


class SlackSender:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client, self._url = client, url

    async def send(self, message: dict[str, Any]) -> None:
        response = await self._client.post(self._url, json={"text": slack_text(message)}, timeout=SEND_TIMEOUT_S)
        response.raise_for_status()


def mail_text(message: dict[str, Any]) -> str:
    lines = [message["summary"], ""]
    lines += [f"{k}: {message[k]}" for k in ("kind", "severity", "companyId", "dataType", "datasetId", "occurredAt")]
    lines += ["", *(f"{k}: {v}" for k, v in (message.get("details") or {}).items())]
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
        mail["Subject"] = f"[codat-relay] {message['severity']}: {message['kind']} — {message['summary']}"[:200]
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
