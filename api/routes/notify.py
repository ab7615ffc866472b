"""Notification routes: contacts, escalation policies and routing rules (admins), delivery state per
alert, and the routes providers and people reach without a token: Twilio's inbound SMS and status
webhooks (verified by X-Twilio-Signature) and the signed, single-use acknowledge links."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import HTMLResponse

from api.deps import AppSettings, Caller, Conn
from api.errors import AUTHED, WITH_BODY, responses
from api.notify_schemas import (
    CONTACT_ID_PATTERN,
    POLICY_ID_PATTERN,
    AlertNotifications,
    ContactBody,
    ContactOut,
    PolicyBody,
    PolicyOut,
    RoutingRuleOut,
    RoutingRulesBody,
    contact_out,
    notification_out,
    policy_out,
    routing_rule_out,
)
from api.schemas import MAX_SAFE_INT
from api.webhook_policy import check_webhook_url
from coldchain.access import Permission
from coldchain.domain import Severity
from coldchain.errors import ConflictError, NotFoundError, ValidationError
from notify.delivery import AckLinkExpired, AckLinkInvalid, SignatureError
from notify.links import AckLinkClaims, verify_ack_token
from notify.planner import (
    contact_from_row,
    policy_from_body,
    route_of,
    routing_rule_from_body,
)
from notify.routing import AlertScope
from notify.sms import (
    ack_reply_twiml,
    parse_ack_reply,
    parse_status_callback,
    verify_twilio_signature,
)
from storage import alerts, escalation_plans, notify_directory, notify_outbox
from storage.notify_directory import ContactRow

log = logging.getLogger(__name__)

router = APIRouter(tags=["notifications"])
ack_router = APIRouter(tags=["notifications"], include_in_schema=False)


# -- admin: contacts, policies, routing rules -------------------------------------------------

ContactPath = Annotated[str, Path(pattern=CONTACT_ID_PATTERN, examples=["dana"])]
PolicyPath = Annotated[str, Path(pattern=POLICY_ID_PATTERN, examples=["night"])]


@router.get("/notify/contacts", response_model=list[ContactOut], responses=responses(*AUTHED))
def list_contacts(conn: Conn, caller: Caller, include_disabled: bool = False) -> list[ContactOut]:
    caller.require(Permission.ADMINISTER)
    found = notify_directory.list_contacts(conn, org=caller.org_id, include_disabled=include_disabled)
    return [contact_out(c) for c in found]


@router.get("/notify/contacts/{contact_id}", response_model=ContactOut, responses=responses(*AUTHED, 404))
def get_contact(contact_id: ContactPath, conn: Conn, caller: Caller) -> ContactOut:
    """A contact; a deleted (disabled) one is gone for this route (the list can still show it)."""
    caller.require(Permission.ADMINISTER)
    row = notify_directory.get_contact(conn, org=caller.org_id, contact_id=contact_id)
    if row.disabled:
        raise NotFoundError("contact", contact_id)
    return contact_out(row)


@router.put("/notify/contacts/{contact_id}", response_model=ContactOut, responses=responses(*WITH_BODY))
def put_contact(
    contact_id: ContactPath, body: ContactBody, conn: Conn, caller: Caller, settings: AppSettings
) -> ContactOut:
    """Create or replace a contact (validated: E.164 phone, time zone, quiet hours)."""
    caller.require(Permission.ADMINISTER)
    row = body.to_row(caller.org_id, contact_id)
    contact_from_row(row)  # the same checks routing applies, refused here rather than skipped later
    if body.webhook_url:  # no private, loopback or link-local targets unless configured
        check_webhook_url(body.webhook_url, allow_private=settings.webhook_allow_private)
    return contact_out(notify_directory.upsert_contact(conn, row, actor=caller.name))


@router.delete(
    "/notify/contacts/{contact_id}",
    status_code=204,
    response_class=Response,
    responses=responses(*AUTHED, 404),
)
def delete_contact(contact_id: ContactPath, conn: Conn, caller: Caller) -> Response:
    caller.require(Permission.ADMINISTER)
    notify_directory.delete_contact(conn, org=caller.org_id, contact_id=contact_id, actor=caller.name)
    return Response(status_code=204)


@router.get("/notify/policies", response_model=list[PolicyOut], responses=responses(*AUTHED))
def list_policies(conn: Conn, caller: Caller) -> list[PolicyOut]:
    caller.require(Permission.ADMINISTER)
    return [policy_out(p) for p in notify_directory.list_policies(conn, org=caller.org_id)]


@router.put(
    "/notify/policies/{policy_id}", status_code=201, response_model=PolicyOut, responses=responses(*WITH_BODY)
)
def put_policy(policy_id: PolicyPath, body: PolicyBody, conn: Conn, caller: Caller) -> PolicyOut:
    caller.require(Permission.ADMINISTER)
    doc = body.model_dump(mode="json", exclude={"default"})
    policy_from_body(f"{policy_id}@1", doc)  # validate before storing
    row = notify_directory.put_policy(
        conn, org=caller.org_id, policy_id=policy_id, body=doc, actor=caller.name, default=body.default
    )
    return policy_out(row)


def _routing_rules(conn: Conn, org: int) -> list[RoutingRuleOut]:
    return [routing_rule_out(n, b) for n, b in notify_directory.list_routing_rules(conn, org=org)]


@router.get("/notify/routing-rules", response_model=list[RoutingRuleOut], responses=responses(*AUTHED))
def list_routing_rules(conn: Conn, caller: Caller) -> list[RoutingRuleOut]:
    caller.require(Permission.ADMINISTER)
    return _routing_rules(conn, caller.org_id)


@router.put(
    "/notify/routing-rules", response_model=list[RoutingRuleOut], responses=responses(*WITH_BODY, 409)
)
def put_routing_rules(body: RoutingRulesBody, conn: Conn, caller: Caller) -> list[RoutingRuleOut]:
    """Replace the ordered routing rules (the first matching rule wins per contact and channel)."""
    caller.require(Permission.ADMINISTER)
    pairs = []
    for rule in body.rules:
        doc = rule.model_dump(mode="json", exclude={"name"}, exclude_none=True)
        routing_rule_from_body(rule.name, doc)
        pairs.append((rule.name, doc))
    notify_directory.put_routing_rules(conn, org=caller.org_id, rules=pairs, actor=caller.name)
    return _routing_rules(conn, caller.org_id)


@router.get(
    "/alerts/{alert_id}/notifications",
    response_model=AlertNotifications,
    responses=responses(*AUTHED, 404),
)
def alert_notifications(
    alert_id: Annotated[int, Path(ge=1, le=MAX_SAFE_INT)], conn: Conn, caller: Caller
) -> AlertNotifications:
    """Who was told what about the alert, by which channel, and what became of it."""
    caller.require(Permission.READ)
    alerts.get_alert(conn, org=caller.org_id, alert_id=alert_id)  # scope check
    rows = notify_outbox.notifications_for_alert(conn, org=caller.org_id, alert_id=alert_id)
    docs = [notification_out(r) for r in rows]
    return AlertNotifications(
        alert_id=alert_id,
        notifications=docs,
        failed=sum(1 for d in docs if d.failed),
        pending=sum(1 for r in rows if r.state in ("pending", "sending", "held")),
    )


# -- Twilio webhooks --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TwilioRequest:
    """A webhook request from Twilio: the URL it called (as Twilio saw it), form and signature."""

    url: str
    form: dict[str, str]
    signature: str | None


async def _twilio_request(request: Request) -> TwilioRequest:
    body = await request.body()
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    settings = request.state.settings
    if settings.public_url:
        # Behind a proxy the URL Twilio signed is the public one, not the one we were reached at.
        url = settings.public_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
    else:
        url = str(request.url)
    return TwilioRequest(url=url, form=form, signature=request.headers.get("X-Twilio-Signature"))


Twilio = Annotated[TwilioRequest, Depends(_twilio_request)]


def _verified(twilio: TwilioRequest, settings: AppSettings) -> Response | None:
    """None when the signature holds, else the response refusing the request."""
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    if not token:
        log.error("a Twilio webhook arrived but TWILIO_AUTH_TOKEN is not set")
        return Response("Twilio webhooks are not configured", status_code=503, media_type="text/plain")
    try:
        verify_twilio_signature(twilio.url, twilio.form, twilio.signature, token)
    except SignatureError as exc:
        log.warning("Twilio webhook refused: %s", exc)
        return Response("bad signature", status_code=403, media_type="text/plain")
    return None


def _twiml(text: str) -> Response:
    return Response(ack_reply_twiml(text), media_type="application/xml")


@router.post("/notify/twilio/inbound", include_in_schema=False)
def twilio_inbound(twilio: Twilio, conn: Conn, settings: AppSettings) -> Response:
    """An SMS to our number: `ACK 1234` acknowledges alert 1234 for the contact who sent it."""
    refused = _verified(twilio, settings)
    if refused is not None:
        return refused
    alert_id = parse_ack_reply(twilio.form.get("Body", ""))
    if alert_id is None:
        return _twiml("To acknowledge an alert, reply ACK followed by its number, e.g. ACK 1234.")
    sender = twilio.form.get("From", "")
    try:
        facts = escalation_plans.alert_facts(conn, alert_id)
    except NotFoundError:
        return _twiml(f"Alert {alert_id} not found.")
    row = notify_directory.contact_by_phone(conn, org=facts.org_id, phone=sender)
    if row is None or not row.may_acknowledge or not _may_acknowledge(conn, row, facts):
        log.warning("SMS acknowledgement of alert %d refused for an unknown sender", alert_id)
        return _twiml(f"Alert {alert_id}: this number may not acknowledge it.")
    try:
        alerts.transition(
            conn,
            org=facts.org_id,
            alert_id=alert_id,
            action="acknowledge",
            actor=f"{row.name} ({row.id})",
            comment="acknowledged by SMS reply",
        )
    except ConflictError:
        return _twiml(f"Alert {alert_id} is already {facts.state}.")
    log.info("alert %d acknowledged by SMS from contact %s", alert_id, row.id)
    return _twiml(f"Alert {alert_id} acknowledged. Thank you.")


def _may_acknowledge(conn: Conn, row: ContactRow, facts: escalation_plans.AlertFacts) -> bool:
    """A contact may acknowledge alerts they were told about, or that fall in their scope."""
    if notify_outbox.notified_about(conn, org=facts.org_id, alert_id=facts.id, contact_id=row.id):
        return True
    try:
        contact = contact_from_row(row)
    except ValidationError:
        return False
    scope = AlertScope(
        alert_id=facts.id,
        severity=Severity(facts.severity),
        shipment_id=facts.shipment_id,
        site=facts.origin,
        route=route_of(facts.origin, facts.destination),
    )
    return contact.covers(scope)


@router.post("/notify/twilio/status", include_in_schema=False)
def twilio_status(twilio: Twilio, conn: Conn, settings: AppSettings) -> Response:
    """A Twilio status callback: moves the notification's delivery state (never backwards)."""
    refused = _verified(twilio, settings)
    if refused is not None:
        return refused
    update = parse_status_callback(twilio.form, url=twilio.url)
    row = notify_outbox.apply_status(
        conn,
        idempotency_key=update.idempotency_key,
        provider_id=update.provider_id,
        state=update.state.value,
        provider_status=update.provider_status,
        error_code=update.error_code,
        now=datetime.now(UTC),
    )
    if row is None:
        log.warning("status callback for an unknown notification (%s)", update.provider_id)
    return Response(status_code=204)


# -- acknowledge links ------------------------------------------------------------------------

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:36em;margin:2em auto;padding:0 1em">
<h2>{title}</h2>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body),
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _claims(token: str, settings: AppSettings) -> AckLinkClaims | HTMLResponse:
    try:
        return verify_ack_token(settings.secret_key.get_secret_value(), token)
    except AckLinkExpired:
        return _page("Link expired", "<p>This acknowledge link has expired. Use the dashboard.</p>", 410)
    except AckLinkInvalid:
        return _page("Invalid link", "<p>This acknowledge link is not valid.</p>", 403)


@ack_router.get("/ack/{token}")
def ack_page(token: str, conn: Conn, settings: AppSettings) -> HTMLResponse:
    """The confirm page. It changes nothing: mail scanners open links on their own."""
    claims = _claims(token, settings)
    if isinstance(claims, HTMLResponse):
        return claims
    if notify_outbox.nonce_used(conn, claims.nonce):
        return _page("Link already used", "<p>This acknowledge link was already used.</p>", 409)
    try:
        facts = escalation_plans.alert_facts(conn, claims.alert_id)
        alert = alerts.get_alert(conn, org=facts.org_id, alert_id=claims.alert_id)
    except NotFoundError:
        return _page("Alert not found", "<p>The alert no longer exists.</p>", 404)
    facts_html = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in (
            ("Alert", str(alert.id)),
            ("Severity", alert.severity.value),
            ("State", alert.state.value),
            ("Shipment", alert.shipment_id or "-"),
            ("Logger", alert.device_id or "-"),
            ("Opened", alert.opened_at.strftime("%Y-%m-%d %H:%M UTC")),
        )
    )
    body = f"<p>{html.escape(alert.message)}</p><table>{facts_html}</table>"
    if alert.state.value != "open":
        return _page(f"Alert {alert.id} is {alert.state.value}", body)
    body += (
        "<form method='post'><p><button type='submit' style='padding:8px 16px'>"
        f"Acknowledge alert {alert.id}</button></p></form>"
    )
    return _page(f"Acknowledge alert {alert.id}?", body)


@ack_router.post("/ack/{token}")
def ack_confirm(token: str, conn: Conn, settings: AppSettings) -> HTMLResponse:
    """Acknowledge: the link's nonce is stored in the same transaction, so it works once."""
    claims = _claims(token, settings)
    if isinstance(claims, HTMLResponse):
        return claims
    try:
        facts = escalation_plans.alert_facts(conn, claims.alert_id)
        contact = notify_directory.get_contact(conn, org=facts.org_id, contact_id=claims.contact_id)
        # The link is signed, but the contact must still be enabled and allowed to acknowledge now.
        if contact.disabled or not contact.may_acknowledge or not _may_acknowledge(conn, contact, facts):
            log.warning("ack link of contact %s refused for alert %d", claims.contact_id, claims.alert_id)
            return _page("Not allowed", "<p>This contact may not acknowledge this alert.</p>", 403)
        with conn.transaction():
            notify_outbox.use_ack_nonce(
                conn,
                nonce=claims.nonce,
                alert_id=claims.alert_id,
                contact_id=claims.contact_id,
                expires_at=datetime.fromtimestamp(claims.expires, tz=UTC),
            )
            alerts.transition(
                conn,
                org=facts.org_id,
                alert_id=claims.alert_id,
                action="acknowledge",
                actor=f"{contact.name} ({contact.id})",
                comment="acknowledged by e-mail link",
            )
    except NotFoundError:
        return _page("Not found", "<p>The alert or the contact no longer exists.</p>", 404)
    except ConflictError as exc:
        return _page("Not acknowledged", f"<p>{html.escape(str(exc))}.</p>", 409)
    log.info("alert %d acknowledged by e-mail link of contact %s", claims.alert_id, claims.contact_id)
    return _page(f"Alert {claims.alert_id} acknowledged", "<p>Thank you.</p>")
