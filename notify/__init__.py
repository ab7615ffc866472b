"""Notifications: SMS, voice, e-mail and webhook channels, routing, escalation, acknowledge links.

Channels deliver one notification each and report a DeliveryReceipt or raise DeliveryError; the
routing and escalation modules are pure and decide who is told what and when. The outbox worker
(database-backed) drives both; see docs/notifications.md.
"""

from coldchain.notification import Channel
from notify.chart import encode_png, png_dimensions, render_excursion_png
from notify.delivery import (
    AckLinkError,
    AckLinkExpired,
    AckLinkInvalid,
    DeliveryError,
    DeliveryReceipt,
    DeliveryState,
    NotificationError,
    SignatureError,
)
from notify.email import SmtpEmail, SmtpSecurity, build_alert_email, message_id_for
from notify.escalation import (
    DueNotification,
    EscalationPolicy,
    EscalationTier,
    SentKey,
    due_notifications,
    escalation_key,
    example_policy,
    next_due_at,
    recipients_for_tier,
)
from notify.links import (
    AckLinkClaims,
    ack_url,
    issue_ack_token,
    redact_ack_url,
    verify_ack_token,
)
from notify.routing import (
    AlertScope,
    Contact,
    GateDecision,
    RateLimit,
    RecentSend,
    RoutedRecipient,
    RoutingRule,
    TimeWindow,
    Verdict,
    contacts_for_alert,
    gate_notification,
    route_alert,
)
from notify.sms import (
    DeliveryReport,
    TwilioSms,
    TwilioVoice,
    ack_reply_twiml,
    alert_sms_text,
    parse_ack_reply,
    parse_status_callback,
    verify_twilio_signature,
)
from notify.webhook import (
    WebhookEndpoint,
    WebhookSender,
    sign_webhook,
    verify_webhook_signature,
)

__all__ = [
    "AckLinkClaims",
    "AckLinkError",
    "AckLinkExpired",
    "AckLinkInvalid",
    "AlertScope",
    "Channel",
    "Contact",
    "DeliveryError",
    "DeliveryReceipt",
    "DeliveryReport",
    "DeliveryState",
    "DueNotification",
    "EscalationPolicy",
    "EscalationTier",
    "GateDecision",
    "NotificationError",
    "RateLimit",
    "RecentSend",
    "RoutedRecipient",
    "RoutingRule",
    "SentKey",
    "SignatureError",
    "SmtpEmail",
    "SmtpSecurity",
    "TimeWindow",
    "TwilioSms",
    "TwilioVoice",
    "Verdict",
    "WebhookEndpoint",
    "WebhookSender",
    "ack_reply_twiml",
    "ack_url",
    "alert_sms_text",
    "build_alert_email",
    "contacts_for_alert",
    "due_notifications",
    "encode_png",
    "escalation_key",
    "example_policy",
    "gate_notification",
    "issue_ack_token",
    "message_id_for",
    "next_due_at",
    "parse_ack_reply",
    "parse_status_callback",
    "png_dimensions",
    "recipients_for_tier",
    "redact_ack_url",
    "render_excursion_png",
    "route_alert",
    "sign_webhook",
    "verify_ack_token",
    "verify_twilio_signature",
    "verify_webhook_signature",
]
