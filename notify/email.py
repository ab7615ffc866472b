"""The e-mail channel: alert messages (text, HTML, inline chart, acknowledge link) sent over SMTP.

The Message-ID is derived from the notification's idempotency key, so a message sent twice after
an ambiguous failure carries the same id and mail systems that deduplicate by it show it once.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import logging
import smtplib
import ssl
from datetime import UTC, datetime, tzinfo
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from enum import StrEnum
from typing import Final

from coldchain.domain import Alert
from coldchain.errors import ConfigurationError, ValidationError
from coldchain.notification import Channel
from notify.delivery import DeliveryError, DeliveryReceipt, DeliveryState

__all__ = ["SmtpEmail", "SmtpSecurity", "build_alert_email", "message_id_for"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 15.0
CHART_CID: Final = "excursion-chart"


class SmtpSecurity(StrEnum):
    """SMTP_SECURITY: STARTTLS on a plain port, implicit TLS (port 465), or none (local only)."""

    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


_DEFAULT_PORTS: Final = {SmtpSecurity.STARTTLS: 587, SmtpSecurity.TLS: 465, SmtpSecurity.NONE: 25}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def message_id_for(idempotency_key: str, from_address: str) -> str:
    """A Message-ID that is the same every time the same notification is sent."""
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "coldchain.invalid"
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}.notification@{domain}>"


def _fmt(value: float | None, unit: str = " °C") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def build_alert_email(
    *,
    alert: Alert,
    to: str,
    from_address: str,
    idempotency_key: str,
    ack_link: str | None = None,
    chart_png: bytes | None = None,
    dashboard_url: str | None = None,
    tz: tzinfo = UTC,
    now: datetime | None = None,
) -> EmailMessage:
    """An alert e-mail: multipart/related holding text and HTML alternatives and the chart.

    The HTML shows the chart inline (cid:) and an acknowledge button; the text part carries the
    same facts and the link for clients that show no HTML.
    """
    if "@" not in parseaddr(to)[1]:
        raise ValidationError(f"not an e-mail address: {to!r}", field="email")
    opened = alert.opened_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
    where = alert.shipment_id or alert.device_id or "unassigned logger"
    subject = f"[{alert.severity.upper()}] Alert {alert.id}: {where}: {alert.message}"
    facts: list[tuple[str, str]] = [
        ("Alert", str(alert.id)),
        ("Severity", alert.severity.value),
        ("State", alert.state.value),
        ("Opened", opened),
        ("Shipment", alert.shipment_id or "-"),
        ("Logger", alert.device_id or "-"),
        ("Peak", _fmt(alert.peak_c)),
        ("Lots", ", ".join(f"{gtin} / {lot}" for gtin, lot in alert.lots) or "-"),
    ]
    width = max(len(k) for k, _ in facts)
    text_lines = [alert.message, ""]
    text_lines += [f"{k.ljust(width)}  {v}" for k, v in facts]
    if ack_link:
        text_lines += ["", "Acknowledge this alert:", ack_link]
    text_lines += ["", f"Or reply to the SMS with: ACK {alert.id}"]
    if dashboard_url:
        text_lines += ["", f"Dashboard: {dashboard_url}"]
    text = "\n".join(text_lines) + "\n"

    rows = "".join(
        f"<tr><th align='left' style='padding:2px 12px 2px 0'>{html.escape(k)}</th>"
        f"<td>{html.escape(v)}</td></tr>"
        for k, v in facts
    )
    colour = {"critical": "#b00020", "alarm": "#d35400"}.get(alert.severity.value, "#7f6000")
    parts = [
        "<!doctype html><html><body style='font-family:sans-serif'>",
        f"<h2 style='color:{colour}'>{html.escape(alert.severity.upper())}: "
        f"{html.escape(alert.message)}</h2>",
        f"<table>{rows}</table>",
    ]
    if chart_png is not None:
        parts.append(f"<p><img src='cid:{CHART_CID}' alt='Temperature during the excursion'></p>")
    if ack_link:
        parts.append(
            f"<p><a href='{html.escape(ack_link, quote=True)}' style='background:{colour};"
            "color:#fff;padding:8px 16px;text-decoration:none;border-radius:4px'>"
            "Acknowledge</a></p>"
        )
    parts.append(f"<p>Or reply to the SMS with <b>ACK {alert.id}</b>.</p>")
    if dashboard_url:
        parts.append(f"<p><a href='{html.escape(dashboard_url, quote=True)}'>Dashboard</a></p>")
    parts.append("</body></html>")

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = from_address
    message["To"] = to
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = message_id_for(idempotency_key, from_address)
    message["X-Coldchain-Notification"] = idempotency_key
    message["X-Coldchain-Alert"] = str(alert.id)
    message["Auto-Submitted"] = "auto-generated"
    if chart_png is None:
        message.set_content(text)
        message.add_alternative("".join(parts), subtype="html")
        return message
    alternative = EmailMessage()
    alternative.set_content(text)
    alternative.add_alternative("".join(parts), subtype="html")
    del alternative["MIME-Version"]  # a body part, not a message
    message.make_related()
    message.set_param("type", "multipart/alternative")
    message.attach(alternative)
    message.add_related(
        chart_png,
        maintype="image",
        subtype="png",
        cid=f"<{CHART_CID}>",
        disposition="inline",
        filename="excursion.png",
    )
    return message


def build_withdrawal_email(
    *, alert: Alert, to: str, from_address: str, idempotency_key: str, now: datetime | None = None
) -> EmailMessage:
    """The e-mail that takes an alert back: late readings no longer show the excursion. It threads
    under nothing and asks for nothing; it says which alert, and why it is withdrawn."""
    if "@" not in parseaddr(to)[1]:
        raise ValidationError(f"not an e-mail address: {to!r}", field="email")
    where = alert.shipment_id or alert.device_id or "unassigned logger"
    text = (
        f"Alert {alert.id} ({where}) is withdrawn.\n\n"
        "Readings the logger delivered late were evaluated with the rest of its series, and they no"
        " longer show this excursion. No action is needed; the alert's history keeps what happened.\n\n"
        f"Was: {alert.message}\n"
    )
    message = EmailMessage()
    message["Subject"] = f"[WITHDRAWN] Alert {alert.id}: {where}"
    message["From"] = from_address
    message["To"] = to
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = message_id_for(idempotency_key, from_address)
    message["X-Coldchain-Notification"] = idempotency_key
    message["X-Coldchain-Alert"] = str(alert.id)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    return message


class SmtpEmail:
    """Sends messages over SMTP with STARTTLS, implicit TLS, or (loopback only) no TLS.

    One connection per send keeps a failure local to one notification; the outbox worker calls
    `send` from a thread. A password is never sent over a connection without TLS unless the
    server is on the loopback interface.
    """

    channel: Final = Channel.EMAIL

    def __init__(
        self,
        *,
        host: str,
        from_address: str,
        port: int | None = None,
        security: SmtpSecurity | str = SmtpSecurity.STARTTLS,
        user: str | None = None,
        password: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not host:
            raise ConfigurationError("SMTP_HOST is required")
        try:
            self.security = SmtpSecurity(security)
        except ValueError:
            raise ConfigurationError("SMTP_SECURITY must be starttls, tls or none") from None
        if "@" not in parseaddr(from_address)[1]:
            raise ConfigurationError("SMTP_FROM must be an e-mail address")
        if (user is None) != (password is None):
            raise ConfigurationError("set both SMTP_USER and SMTP_PASSWORD, or neither")
        if password is not None and self.security is SmtpSecurity.NONE and not _is_loopback(host):
            raise ConfigurationError("refusing to send SMTP_PASSWORD without TLS")
        if timeout_s <= 0:
            raise ConfigurationError("the SMTP timeout must be positive")
        self.host = host
        self.port = port or _DEFAULT_PORTS[self.security]
        self.from_address = from_address
        self.user = user
        self._password = password
        self.timeout_s = timeout_s
        self._ssl_context = ssl_context

    def __repr__(self) -> str:
        return (
            f"SmtpEmail(host={self.host!r}, port={self.port}, security={self.security.value!r}, "
            f"user={self.user!r})"
        )

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        if self.security is SmtpSecurity.TLS:
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=self._context())
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        try:
            if self.security is SmtpSecurity.STARTTLS:
                smtp.starttls(context=self._context())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(self, message: EmailMessage, *, idempotency_key: str) -> DeliveryReceipt:
        """Hand one message to the SMTP server; SENT once it accepted it, else DeliveryError."""
        recipients = [parseaddr(a)[1] for a in message.get_all("To", [])]
        if not recipients or not all("@" in r for r in recipients):
            raise DeliveryError("message has no valid recipient", channel=self.channel, retryable=False)
        if message["From"] is None:
            message["From"] = self.from_address
        sender = Address(addr_spec=parseaddr(self.from_address)[1]).addr_spec
        sent_data = False
        try:
            smtp = self._connect()
            try:
                if self.user is not None and self._password is not None:
                    smtp.login(self.user, self._password)
                sent_data = True
                smtp.send_message(message, from_addr=sender, to_addrs=recipients)
            finally:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            retryable = bool(codes) and all(400 <= c < 500 for c in codes)
            raise self._error("recipient refused", exc, retryable, codes[0] if codes else None) from exc
        except smtplib.SMTPResponseException as exc:
            # 4xx is a temporary refusal, 5xx permanent (535 is wrong credentials).
            retryable = 400 <= exc.smtp_code < 500
            raise self._error("server refused", exc, retryable, exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Covers timeouts, refused connections, TLS failures and dropped connections.
            error = self._error("connection failed", exc, True, None)
            error.ambiguous = sent_data
            raise error from exc
        logger.info("email %s accepted by %s:%s", idempotency_key, self.host, self.port)
        return DeliveryReceipt(
            channel=self.channel,
            idempotency_key=idempotency_key,
            state=DeliveryState.SENT,
            provider_id=str(message["Message-ID"]) if message["Message-ID"] else None,
        )

    def _error(self, what: str, exc: Exception, retryable: bool, code: int | None) -> DeliveryError:
        # smtplib's messages echo the server's reply, never our password.
        error = DeliveryError(
            f"SMTP {what} ({type(exc).__name__}{'' if code is None else f' {code}'})",
            channel=self.channel,
            retryable=retryable,
            status=code,
        )
        logger.warning("email to %s:%s failed: %s (retryable=%s)", self.host, self.port, error, retryable)
        return error
