"""Twilio SMS and voice channels, inbound SMS ACK replies, and status callbacks.

Idempotency: Twilio's Messages and Calls endpoints take no idempotency header, so a request that
times out after Twilio accepted it may have produced a message. The outbox therefore records the
attempt (key, "sending") before calling `send` and the receipt after it; a key already marked
sent is never sent again (at most once per key). The key also rides in the status callback URL
(`?notification=<key>`), so a message whose receipt was lost in a crash still reports back under
its key, which is how the outbox reconciles an ambiguous attempt before retrying it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import urllib3
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from coldchain.domain import Alert
from coldchain.errors import ConfigurationError, ValidationError
from coldchain.notification import Channel
from notify.delivery import DeliveryError, DeliveryReceipt, DeliveryState, SignatureError, validate_e164

__all__ = [
    "CALLBACK_KEY_PARAM",
    "DeliveryReport",
    "RebasedTwilioHttpClient",
    "TwilioSms",
    "TwilioVoice",
    "ack_reply_twiml",
    "alert_sms_text",
    "callback_url_for",
    "parse_ack_reply",
    "parse_status_callback",
    "rebase_url",
    "validate_e164",
    "verify_twilio_signature",
]

logger = logging.getLogger(__name__)

CALLBACK_KEY_PARAM: Final = "notification"
DEFAULT_TIMEOUT_S: Final = 10.0

# "ACK 1234", "ack #1234", " Ack 1234 ", "ACK: 1234.", "acknowledge 1234"
_ACK_RE: Final = re.compile(r"^\s*ack(?:nowledged?)?\b[\s:#-]*#?\s*([0-9]{1,18})\s*[.!]*\s*$", re.I)

_MESSAGE_STATES: Final[Mapping[str, DeliveryState]] = {
    "accepted": DeliveryState.QUEUED,
    "scheduled": DeliveryState.QUEUED,
    "queued": DeliveryState.QUEUED,
    "sending": DeliveryState.QUEUED,
    "sent": DeliveryState.SENT,
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.DELIVERED,
    "undelivered": DeliveryState.UNDELIVERED,
    "failed": DeliveryState.FAILED,
    "canceled": DeliveryState.FAILED,
}
_CALL_STATES: Final[Mapping[str, DeliveryState]] = {
    "queued": DeliveryState.QUEUED,
    "initiated": DeliveryState.QUEUED,
    "ringing": DeliveryState.SENT,
    "in-progress": DeliveryState.DELIVERED,
    "completed": DeliveryState.DELIVERED,
    "busy": DeliveryState.UNDELIVERED,
    "no-answer": DeliveryState.UNDELIVERED,
    "failed": DeliveryState.FAILED,
    "canceled": DeliveryState.FAILED,
}


def alert_sms_text(alert: Alert, *, escalated_tier: int | None = None) -> str:
    """A short SMS for an alert, in the GSM-7 alphabet (no degree sign, which would halve the
    characters per segment), ending with how to acknowledge it."""
    where = alert.shipment_id or alert.device_id or "logger"
    head = f"{alert.severity.value.upper()} alert {alert.id} {where}"
    if escalated_tier is not None and escalated_tier > 1:
        head += f" (escalated, tier {escalated_tier})"
    peak = f" Peak {alert.peak_c:.1f}C." if alert.peak_c is not None else ""
    message = alert.message.replace("°", "")
    return f"{head}: {message}.{peak} Reply ACK {alert.id}"


def alert_withdrawal_text(alert: Alert) -> str:
    """The SMS that takes an alert back: late readings show no excursion, nothing to do."""
    where = alert.shipment_id or alert.device_id or "logger"
    return (
        f"WITHDRAWN alert {alert.id} {where}: late readings from the logger show no excursion."
        " No action needed."
    )


def rebase_url(url: str, base_url: str) -> str:
    """`url` with its scheme and host replaced by `base_url`'s (whose path becomes a prefix)."""
    target = urlsplit(url)
    base = urlsplit(base_url)
    path = base.path.rstrip("/") + target.path
    return urlunsplit((base.scheme, base.netloc, path, target.query, target.fragment))


class RebasedTwilioHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """The SDK's HTTP client, sending every request to another base URL.

    The SDK builds absolute URLs (`https://api.twilio.com/2010-04-01/...`) in each domain, so
    the one seam that sees every request is the HTTP client: here the scheme and host are swapped
    for those of `base_url` (a test endpoint or a Twilio-compatible gateway).
    """

    def __init__(self, *, base_url: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"TWILIO_API_BASE_URL {base_url!r} is not an http(s) URL")
        super().__init__(timeout=timeout, logger=logging.getLogger(f"{__name__}.http"))
        self.base_url = base_url

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        return super().request(
            method,
            rebase_url(url, self.base_url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


def _http_client(api_base_url: str | None, timeout_s: float) -> Any:
    if timeout_s <= 0:
        raise ConfigurationError("the Twilio timeout must be positive")
    if api_base_url:
        return RebasedTwilioHttpClient(base_url=api_base_url, timeout=timeout_s)
    return TwilioHttpClient(timeout=timeout_s, logger=logging.getLogger(f"{__name__}.http"))


def _twilio_client(account_sid: str, auth_token: str, api_base_url: str | None, timeout_s: float) -> Any:
    if not account_sid or not auth_token:
        raise ConfigurationError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are both required")
    # An explicit environment keeps TWILIO_EDGE/TWILIO_REGION from the process out of the way:
    # every setting is passed in, none read behind the caller's back.
    return Client(
        account_sid,
        auth_token,
        http_client=_http_client(api_base_url, timeout_s),
        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
    )


def callback_url_for(status_callback_url: str, idempotency_key: str) -> str:
    """The status callback URL carrying the notification's key, so callbacks map back to it."""
    parts = urlsplit(status_callback_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != CALLBACK_KEY_PARAM]
    query.append((CALLBACK_KEY_PARAM, idempotency_key))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _delivery_error(exc: Exception, channel: Channel) -> DeliveryError:
    """Twilio and network failures as our DeliveryError (4xx permanent, 5xx/network retryable)."""
    if isinstance(exc, TwilioRestException):
        status = int(exc.status)
        retryable = status >= 500 or status in (408, 429)
        return DeliveryError(
            f"Twilio refused the {channel}: HTTP {status}, code {exc.code}: {exc.msg}",
            channel=channel,
            retryable=retryable,
            status=status,
            provider_code=exc.code,
        )
    status_attr = getattr(exc, "status", None)
    if isinstance(exc, TwilioException) and isinstance(status_attr, int):
        # RFC 9457 style errors (TwilioServiceException) carry the same HTTP status.
        return DeliveryError(
            f"Twilio refused the {channel}: HTTP {status_attr}",
            channel=channel,
            retryable=status_attr >= 500 or status_attr in (408, 429),
            status=status_attr,
            provider_code=getattr(exc, "code", None),
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        # A refused or timed-out connect never reached Twilio; a connection dropped while
        # waiting for the answer may have, and requests reports both as ConnectionError.
        return DeliveryError(
            f"cannot reach Twilio for the {channel}: {type(exc).__name__}",
            channel=channel,
            retryable=True,
            ambiguous=not _never_connected(exc),
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return DeliveryError(
            f"Twilio did not answer the {channel} in time",
            channel=channel,
            retryable=True,
            ambiguous=True,
        )
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return DeliveryError(
            f"network error sending the {channel}: {type(exc).__name__}",
            channel=channel,
            retryable=True,
            ambiguous=True,
        )
    return DeliveryError(
        f"unexpected Twilio failure for the {channel}: {type(exc).__name__}",
        channel=channel,
        retryable=False,
    )


class _TwilioChannel:
    """What both Twilio channels share: an SDK client whose connection pool they release."""

    _client: Client

    def close(self) -> None:
        """Release the HTTP connection pool."""
        session = getattr(self._client.http_client, "session", None)
        if session is not None:
            session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TwilioSms(_TwilioChannel):
    """Sends SMS through Twilio's Messages API with the official SDK.

    Exactly one of `from_number` (E.164) and `messaging_service_sid` is used as the sender. With
    `api_base_url`, requests go there instead of https://api.twilio.com. `status_callback_url`
    is where Twilio reports delivery; each message's URL carries its idempotency key.
    """

    channel: Final = Channel.SMS

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base_url: str | None = None,
        status_callback_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if (from_number is None) == (messaging_service_sid is None):
            raise ConfigurationError("set exactly one of TWILIO_FROM and TWILIO_MESSAGING_SERVICE_SID")
        if from_number is not None:
            try:
                validate_e164(from_number)
            except ValidationError as exc:
                raise ConfigurationError(f"TWILIO_FROM: {exc}") from None
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback_url = status_callback_url
        self._client = _twilio_client(account_sid, auth_token, api_base_url, timeout_s)

    def send(self, *, to: str, body: str, idempotency_key: str) -> DeliveryReceipt:
        """Send one SMS; returns Twilio's SID and status or raises DeliveryError."""
        try:
            validate_e164(to)
        except ValidationError as exc:
            raise DeliveryError(str(exc), channel=self.channel, retryable=False) from None
        if not body.strip():
            raise DeliveryError("empty SMS body", channel=self.channel, retryable=False)
        kwargs: dict[str, Any] = {"to": to, "body": body}
        if self.from_number is not None:
            kwargs["from_"] = self.from_number
        else:
            kwargs["messaging_service_sid"] = self.messaging_service_sid
        if self.status_callback_url:
            kwargs["status_callback"] = callback_url_for(self.status_callback_url, idempotency_key)
        try:
            message = self._client.messages.create(**kwargs)
        except Exception as exc:
            error = _delivery_error(exc, self.channel)
            logger.warning("sms %s failed: %s (retryable=%s)", idempotency_key, error, error.retryable)
            raise error from exc
        state = _MESSAGE_STATES.get(str(message.status), DeliveryState.QUEUED)
        logger.info("sms %s accepted as %s (%s)", idempotency_key, message.sid, message.status)
        return DeliveryReceipt(
            channel=self.channel,
            idempotency_key=idempotency_key,
            state=state,
            provider_id=str(message.sid),
            detail=str(message.status),
        )


class TwilioVoice(_TwilioChannel):
    """Places a voice call that reads the alert aloud (TwiML <Say>), for critical alerts."""

    channel: Final = Channel.VOICE

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        api_base_url: str | None = None,
        status_callback_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        language: str = "en-US",
        loops: int = 2,
    ) -> None:
        try:
            validate_e164(from_number)
        except ValidationError as exc:
            raise ConfigurationError(f"voice caller id: {exc}") from None
        if not 1 <= loops <= 10:
            raise ConfigurationError("voice loops must be between 1 and 10")
        self.from_number = from_number
        self.status_callback_url = status_callback_url
        self.language = language
        self.loops = loops
        self._client = _twilio_client(account_sid, auth_token, api_base_url, timeout_s)

    def twiml(self, message: str) -> str:
        """The TwiML the call plays: the message, said `loops` times."""
        response = VoiceResponse()
        response.say(message, language=self.language, loop=self.loops)
        return str(response)

    def send(self, *, to: str, body: str, idempotency_key: str) -> DeliveryReceipt:
        """Place one call reading `body`; returns the call SID or raises DeliveryError."""
        try:
            validate_e164(to)
        except ValidationError as exc:
            raise DeliveryError(str(exc), channel=self.channel, retryable=False) from None
        kwargs: dict[str, Any] = {"to": to, "from_": self.from_number, "twiml": self.twiml(body)}
        if self.status_callback_url:
            kwargs["status_callback"] = callback_url_for(self.status_callback_url, idempotency_key)
            kwargs["status_callback_event"] = ["initiated", "ringing", "answered", "completed"]
        try:
            call = self._client.calls.create(**kwargs)
        except Exception as exc:
            error = _delivery_error(exc, self.channel)
            logger.warning("call %s failed: %s (retryable=%s)", idempotency_key, error, error.retryable)
            raise error from exc
        logger.info("call %s placed as %s (%s)", idempotency_key, call.sid, call.status)
        return DeliveryReceipt(
            channel=self.channel,
            idempotency_key=idempotency_key,
            state=_CALL_STATES.get(str(call.status), DeliveryState.QUEUED),
            provider_id=str(call.sid),
            detail=str(call.status),
        )


def verify_twilio_signature(
    url: str,
    params: Mapping[str, str | Sequence[str]],
    signature: str | None,
    auth_token: str,
) -> None:
    """Check Twilio's X-Twilio-Signature for a webhook request; raise SignatureError if wrong.

    `url` is the full URL Twilio requested (scheme, host, path and query, as configured in
    Twilio; behind a proxy rebuild it from the public address), `params` the POST form fields.
    """
    if not auth_token:
        raise ConfigurationError("TWILIO_AUTH_TOKEN is needed to verify Twilio requests")
    if not signature:
        raise SignatureError("missing X-Twilio-Signature")
    form = {k: (list(v) if not isinstance(v, str) else v) for k, v in params.items()}
    if not RequestValidator(auth_token).validate(url, form, signature):
        raise SignatureError("X-Twilio-Signature does not match")


def parse_ack_reply(body: str) -> int | None:
    """The alert id in an SMS reply like 'ACK 1234' or 'ack #1234', else None."""
    match = _ACK_RE.match(body or "")
    return int(match.group(1)) if match else None


def ack_reply_twiml(text: str) -> str:
    """TwiML answering an inbound SMS with one message (the confirmation or the error)."""
    response = MessagingResponse()
    response.message(text)
    return str(response)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One Twilio status callback (a delivery report): which notification, which message or call,
    which state."""

    idempotency_key: str | None
    provider_id: str
    state: DeliveryState
    provider_status: str
    error_code: str | None = None


def parse_status_callback(form: Mapping[str, str], *, url: str) -> DeliveryReport:
    """Read a Twilio status callback (Messages or Calls) into our delivery state.

    `url` is the URL Twilio called; its `notification` query parameter is our idempotency key.
    Verify the signature first with `verify_twilio_signature`.
    """
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    key = query.get(CALLBACK_KEY_PARAM) or None
    if "MessageSid" in form or "SmsSid" in form:
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        table = _MESSAGE_STATES
    elif "CallSid" in form:
        sid = form["CallSid"]
        status = (form.get("CallStatus") or "").lower()
        table = _CALL_STATES
    else:
        raise ValidationError("not a Twilio status callback (no MessageSid or CallSid)")
    if status not in table:
        raise ValidationError(f"unknown Twilio status {status!r}", field="status")
    error_code = form.get("ErrorCode") or None
    return DeliveryReport(
        idempotency_key=key,
        provider_id=sid,
        state=table[status],
        provider_status=status,
        error_code=error_code,
    )
