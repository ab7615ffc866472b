"""What a recall notification says to a consignee, per channel: the recall, the lots and
quantities the consignee received, and the link to acknowledge with what it quarantined or
returned. Pure: the worker reads the facts (storage.recalls.message) and sends the result."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from coldchain.errors import ValidationError
from notify.email import message_id_for
from storage.recalls import RecallMessage

RECALL_ACK_PATH = "/recall-ack"


def _lines(m: RecallMessage) -> list[str]:
    return [f"{gtin} lot {lot}: {'?' if q is None else q}" for gtin, lot, q in m.lines]


def _head(m: RecallMessage) -> str:
    klass = f" class {m.classification}" if m.classification else ""
    return f"RECALL {m.recall_id}{klass}: shipment {m.shipment_id}"


def recall_sms_text(m: RecallMessage, ack_link: str | None) -> str:
    """Short, GSM-7 only (no degree sign, no typographic quotes)."""
    text = [_head(m), m.reason[:160], *_lines(m)[:5]]
    if len(m.lines) > 5:
        text.append(f"and {len(m.lines) - 5} more lots")
    text.append("Quarantine these units and confirm:" if ack_link else "Quarantine these units and confirm.")
    if ack_link:
        text.append(ack_link)
    return "\n".join(text).replace("°", "")


def recall_email(
    m: RecallMessage,
    *,
    to: str,
    from_address: str,
    idempotency_key: str,
    ack_link: str | None,
    now: datetime | None = None,
) -> EmailMessage:
    if "@" not in parseaddr(to)[1]:
        raise ValidationError(f"not an e-mail address: {to!r}", field="email")
    opened = m.opened_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = [
        ("Recall", str(m.recall_id)),
        ("Classification", m.classification or "-"),
        ("Opened", opened),
        ("Shipment", m.shipment_id),
        ("Consignee", m.consignee or "-"),
    ]
    text = [m.reason, "", *(f"{k}: {v}" for k, v in facts), "", "Lots you received:", *_lines(m)]
    text += ["", "Quarantine these units and tell us what you quarantined or returned."]
    if ack_link:
        text += [ack_link]
    rows = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts
    )
    lots = "".join(f"<li>{html.escape(line)}</li>" for line in _lines(m))
    body = [
        "<!doctype html><html><body style='font-family:sans-serif'>",
        f"<h2 style='color:#b00020'>{html.escape(_head(m))}</h2><p>{html.escape(m.reason)}</p>",
        f"<table>{rows}</table><p>Lots you received:</p><ul>{lots}</ul>",
        "<p>Quarantine these units and tell us what you quarantined or returned.</p>",
    ]
    if ack_link:
        body.append(f"<p><a href='{html.escape(ack_link, quote=True)}'>Acknowledge the recall</a></p>")
    body.append("</body></html>")
    message = EmailMessage()
    message["Subject"] = f"{_head(m)}: {m.reason[:80]}"
    message["From"] = from_address
    message["To"] = to
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = message_id_for(idempotency_key, from_address)
    message["X-Coldchain-Notification"] = idempotency_key
    message["X-Coldchain-Recall"] = str(m.recall_id)
    message.set_content("\n".join(text) + "\n")
    message.add_alternative("".join(body), subtype="html")
    return message


def recall_webhook_body(m: RecallMessage, *, idempotency_key: str, ack_link: str | None) -> dict[str, Any]:
    return {
        "event": "recall.notification",
        "notification": idempotency_key,
        "recall": {
            "id": m.recall_id,
            "reason": m.reason,
            "classification": m.classification,
            "opened_at": m.opened_at.isoformat(),
        },
        "consignee": {"id": m.consignee_id, "name": m.consignee, "shipment": m.shipment_id},
        "lots": [{"gtin": g, "lot": lot, "quantity": q} for g, lot, q in m.lines],
        "acknowledge": ack_link,
    }
