"""Notification channels over real protocols: the Twilio SDK against a local Twilio endpoint,
SMTP against aiosmtpd, signed webhooks against a local HTTP server, and acknowledge links."""

from __future__ import annotations

import email
import email.policy
import ssl
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import numpy as np
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from twilio.request_validator import RequestValidator

from coldchain.domain import Alert, AlertState, Severity
from coldchain.errors import AuthError, ConfigurationError
from notify import (
    AckLinkExpired,
    AckLinkInvalid,
    Channel,
    DeliveryError,
    DeliveryState,
    SignatureError,
    SmtpEmail,
    TwilioSms,
    TwilioVoice,
    WebhookEndpoint,
    WebhookSender,
    ack_url,
    alert_sms_text,
    build_alert_email,
    issue_ack_token,
    parse_ack_reply,
    parse_status_callback,
    png_dimensions,
    redact_ack_url,
    render_excursion_png,
    sign_webhook,
    verify_ack_token,
    verify_twilio_signature,
    verify_webhook_signature,
)
from notify.sms import rebase_url
from tests.support.net import free_port

try:
    from tests.support.twilio_stub import TwilioStub
except ImportError:  # tests/ run as a plain directory
    from twilio_stub import TwilioStub  # type: ignore[no-redef]

ACCOUNT_SID = "AC" + "1f" * 16
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
LINK_SECRET = b"k" * 32
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def make_alert(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "id": 1234,
        "organization": "default",
        "kind": "excursion",
        "severity": Severity.CRITICAL,
        "state": AlertState.OPEN,
        "device_id": "TRK-0042-L1",
        "shipment_id": "SO-1001",
        "limit_id": "high-1",
        "message": "above 8.0 °C for 32 min",
        "opened_at": T0,
        "peak_c": 12.3,
        "lots": (("09506000134352", "A123"),),
    }
    fields.update(overrides)
    return Alert(**fields)


# -- Twilio SMS and voice ---------------------------------------------------------------------


@pytest.fixture()
def stub() -> Iterator[TwilioStub]:
    with TwilioStub(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as running:
        yield running


@pytest.fixture()
def sms(stub: TwilioStub) -> Iterator[TwilioSms]:
    with TwilioSms(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number="+15005550006",
        api_base_url=stub.base_url,
        status_callback_url="https://coldchain.example/api/v1/twilio/status?org=acme",
        timeout_s=5,
    ) as channel:
        yield channel


def test_rebase_url_swaps_scheme_and_host_and_keeps_path_and_query() -> None:
    url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?PageSize=5"
    assert rebase_url(url, "http://127.0.0.1:9000") == (
        "http://127.0.0.1:9000/2010-04-01/Accounts/AC1/Messages.json?PageSize=5"
    )
    assert rebase_url(url, "http://gw.local/twilio/").startswith("http://gw.local/twilio/2010-04-01/")


def test_sms_is_sent_by_the_sdk_to_the_base_url(stub: TwilioStub, sms: TwilioSms) -> None:
    text = alert_sms_text(make_alert())
    receipt = sms.send(to="+4915112345678", body=text, idempotency_key="esc:1234:default:t1")

    (request,) = stub.requests
    assert request.kind == "Messages"
    assert (request.username, request.password) == (ACCOUNT_SID, AUTH_TOKEN)
    assert request.field("To") == "+4915112345678"
    assert request.field("From") == "+15005550006"
    assert request.field("Body") == text
    assert "Reply ACK 1234" in text and "°" not in text
    callback = urlsplit(request.field("StatusCallback") or "")
    assert callback.netloc == "coldchain.example"
    assert dict(parse_qsl(callback.query)) == {"org": "acme", "notification": "esc:1234:default:t1"}
    assert receipt.channel is Channel.SMS
    assert receipt.provider_id is not None and receipt.provider_id.startswith("SM")
    assert receipt.provider_id == request.sid
    assert receipt.state is DeliveryState.QUEUED
    assert receipt.idempotency_key == "esc:1234:default:t1"


def test_sms_through_a_messaging_service(stub: TwilioStub) -> None:
    with TwilioSms(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        messaging_service_sid="MG" + "2a" * 16,
        api_base_url=stub.base_url,
    ) as channel:
        receipt = channel.send(to="+15551230000", body="hello", idempotency_key="k-1")
    (request,) = stub.requests
    assert request.field("MessagingServiceSid") == "MG" + "2a" * 16
    assert request.field("From") is None
    assert request.field("StatusCallback") is None
    assert receipt.detail == "accepted" and receipt.state is DeliveryState.QUEUED


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(500, 20500, True), (503, 20503, True), (429, 20429, True), (400, 21211, False)],
)
def test_twilio_errors_map_to_retryable_or_permanent(
    stub: TwilioStub, sms: TwilioSms, status: int, code: int, retryable: bool
) -> None:
    stub.fail_next(status, code=code, message="The 'To' number is not valid")
    with pytest.raises(DeliveryError) as caught:
        sms.send(to="+15551230000", body="x", idempotency_key="k-err")
    assert caught.value.retryable is retryable
    assert caught.value.status == status
    assert caught.value.provider_code == code
    assert caught.value.channel is Channel.SMS
    # The next send goes through: the failure was for one request only.
    assert sms.send(to="+15551230000", body="x", idempotency_key="k-ok").provider_id


def test_wrong_auth_token_is_permanent_and_never_logged(
    stub: TwilioStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with (
        TwilioSms(
            account_sid=ACCOUNT_SID,
            auth_token="wrong-token-value",
            from_number="+15005550006",
            api_base_url=stub.base_url,
        ) as channel,
        pytest.raises(DeliveryError) as caught,
    ):
        channel.send(to="+15551230000", body="x", idempotency_key="k")
    assert caught.value.status == 401 and not caught.value.retryable
    assert "wrong-token-value" not in caplog.text
    assert AUTH_TOKEN not in caplog.text


def test_unreachable_twilio_is_retryable_and_not_ambiguous() -> None:
    with (
        TwilioSms(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number="+15005550006",
            api_base_url=f"http://127.0.0.1:{free_port()}",
            timeout_s=2,
        ) as channel,
        pytest.raises(DeliveryError) as caught,
    ):
        channel.send(to="+15551230000", body="x", idempotency_key="k")
    assert caught.value.retryable and not caught.value.ambiguous


def test_slow_twilio_times_out_as_retryable_and_ambiguous(stub: TwilioStub) -> None:
    stub.set_delay(1.0)
    with (
        TwilioSms(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number="+15005550006",
            api_base_url=stub.base_url,
            timeout_s=0.2,
        ) as channel,
        pytest.raises(DeliveryError) as caught,
    ):
        channel.send(to="+15551230000", body="x", idempotency_key="k")
    assert caught.value.retryable and caught.value.ambiguous
    # The stub did get the request: exactly why the outbox treats this as "maybe sent".
    assert len(stub.wait_for(1)) == 1


def test_invalid_number_is_refused_before_any_request(stub: TwilioStub, sms: TwilioSms) -> None:
    with pytest.raises(DeliveryError) as caught:
        sms.send(to="0151 1234", body="x", idempotency_key="k")
    assert not caught.value.retryable
    assert stub.requests == []


def test_sms_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        TwilioSms(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    with pytest.raises(ConfigurationError):
        TwilioSms(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number="+15005550006",
            messaging_service_sid="MG" + "0" * 32,
        )
    with pytest.raises(ConfigurationError):
        TwilioSms(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_number="+15005550006",
            api_base_url="ftp://x",
        )


def test_voice_call_reads_the_alert(stub: TwilioStub) -> None:
    with TwilioVoice(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number="+15005550006",
        api_base_url=stub.base_url,
        status_callback_url="https://coldchain.example/api/v1/twilio/status",
    ) as voice:
        receipt = voice.send(to="+15551230000", body="Critical alert 1234 on SO-1001", idempotency_key="v-1")
    (request,) = stub.requests
    assert request.kind == "Calls"
    twiml = request.field("Twiml") or ""
    assert "<Say" in twiml and "Critical alert 1234 on SO-1001" in twiml
    assert 'loop="2"' in twiml
    assert request.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert receipt.provider_id is not None and receipt.provider_id.startswith("CA")
    assert receipt.provider_id == request.sid
    assert receipt.channel is Channel.VOICE


class _Recorder(BaseHTTPRequestHandler):
    """Collects POSTs (path, headers, raw body) and answers with `server.answer`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server: Any = self.server
        server.received.append((self.path, dict(self.headers.items()), body))
        status, headers = server.answer
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture()
def receiver() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.received = []
    server.answer = (200, {})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_status_callback_round_trip(stub: TwilioStub, receiver: Any) -> None:
    port = receiver.server_address[1]
    with TwilioSms(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number="+15005550006",
        api_base_url=stub.base_url,
        status_callback_url=f"http://127.0.0.1:{port}/api/v1/twilio/status",
    ) as channel:
        receipt = channel.send(to="+15551230000", body="x", idempotency_key="esc:7:p:t1:r0:c:sms")
    assert receipt.provider_id is not None
    assert stub.send_status_callback(receipt.provider_id, "delivered") == 200

    path, headers, body = receiver.received[0]
    url = f"http://127.0.0.1:{port}{path}"
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    verify_twilio_signature(url, form, headers.get("X-Twilio-Signature"), AUTH_TOKEN)
    update = parse_status_callback(form, url=url)
    assert update.idempotency_key == "esc:7:p:t1:r0:c:sms"
    assert update.provider_id == receipt.provider_id
    assert update.state is DeliveryState.DELIVERED
    # A late "sent" callback cannot move a delivered message backwards.
    assert DeliveryState.DELIVERED.advance(DeliveryState.SENT) is DeliveryState.DELIVERED
    assert DeliveryState.QUEUED.advance(DeliveryState.SENT) is DeliveryState.SENT

    with pytest.raises(SignatureError):
        verify_twilio_signature(
            url, {**form, "MessageStatus": "failed"}, headers.get("X-Twilio-Signature"), AUTH_TOKEN
        )


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("queued", DeliveryState.QUEUED),
        ("sent", DeliveryState.SENT),
        ("delivered", DeliveryState.DELIVERED),
        ("undelivered", DeliveryState.UNDELIVERED),
        ("failed", DeliveryState.FAILED),
    ],
)
def test_message_status_maps_to_delivery_state(status: str, state: DeliveryState) -> None:
    form = {"MessageSid": "SM1", "MessageStatus": status, "ErrorCode": "30003"}
    update = parse_status_callback(form, url="https://x.example/s?notification=k9")
    assert update.state is state and update.idempotency_key == "k9"
    assert update.error_code == "30003"


def test_inbound_sms_signature_valid_and_invalid() -> None:
    url = "https://coldchain.example/api/v1/twilio/inbound"
    params = {
        "MessageSid": "SM" + "3" * 32,
        "AccountSid": ACCOUNT_SID,
        "From": "+4915112345678",
        "To": "+15005550006",
        "Body": "ack #1234",
        "NumMedia": "0",
    }
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    verify_twilio_signature(url, params, signature, AUTH_TOKEN)
    assert parse_ack_reply(params["Body"]) == 1234

    with pytest.raises(SignatureError) as caught:
        verify_twilio_signature(url, {**params, "Body": "ACK 9999"}, signature, AUTH_TOKEN)
    assert isinstance(caught.value, AuthError)
    with pytest.raises(SignatureError):
        verify_twilio_signature(url, params, signature, "another-token")
    with pytest.raises(SignatureError):
        verify_twilio_signature(url + "?x=1", params, signature, AUTH_TOKEN)
    with pytest.raises(SignatureError):
        verify_twilio_signature(url, params, None, AUTH_TOKEN)


@pytest.mark.parametrize(
    ("body", "alert_id"),
    [
        ("ACK 1234", 1234),
        ("ack #1234", 1234),
        (" Ack 1234 ", 1234),
        ("ACK: 77.", 77),
        ("ack#5", 5),
        ("Acknowledge 42", 42),
        ("ACK", None),
        ("ACK 12a", None),
        ("please ack 1234", None),
        ("BACK 1234", None),
        ("", None),
    ],
)
def test_parse_ack_reply(body: str, alert_id: int | None) -> None:
    assert parse_ack_reply(body) == alert_id


# -- chart -------------------------------------------------------------------------------------


def _decode_png(png: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Decode our own RGB/filter-0 PNG, walking the chunks and checking every CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * 3)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def _has_colour(image: np.ndarray[Any, np.dtype[np.uint8]], rgb: tuple[int, int, int]) -> bool:
    return bool((image == np.array(rgb, dtype=np.uint8)).all(axis=2).any())


def test_chart_png_shows_readings_and_limits() -> None:
    t = T0.timestamp() + np.arange(0, 3600, 60.0)
    c = 5 + 6 * np.exp(-(((np.arange(60) - 30) / 8.0) ** 2))
    c[10] = np.nan  # a gap
    png = render_excursion_png(t, c, low_c=2.0, high_c=8.0, width=400, height=160)
    assert png_dimensions(png) == (400, 160)
    image = _decode_png(png)
    assert image.shape == (160, 400, 3)
    assert _has_colour(image, (200, 30, 30))  # limit lines
    assert _has_colour(image, (20, 90, 200))  # the readings


def test_chart_collapses_many_readings_and_tolerates_empty_input() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(200_000, dtype=np.float64) * 10
    png = render_excursion_png(t, 5 + rng.normal(0, 2, t.size), low_c=2, high_c=8)
    assert png_dimensions(png) == (480, 180)
    assert _has_colour(_decode_png(png), (20, 90, 200))
    empty = render_excursion_png([], [], low_c=2, high_c=8)
    assert png_dimensions(empty) == (480, 180)


# -- e-mail ------------------------------------------------------------------------------------


class _Inbox:
    def __init__(self, rcpt_answer: str | None = None) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rcpt_answer = rcpt_answer

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.rcpt_answer is not None:
            return self.rcpt_answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _server_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    return context


def _build(ack: str | None = "https://coldchain.example/ack?token=abc") -> EmailMessage:
    t = T0.timestamp() + np.arange(0, 3600, 60.0)
    c = np.where((np.arange(60) > 20) & (np.arange(60) < 45), 11.0, 5.0)
    return build_alert_email(
        alert=make_alert(),
        to="Dispatch <dispatch@example.com>",
        from_address="Coldchain <alerts@coldchain.example>",
        idempotency_key="esc:1234:default:t2:r0:disp:email",
        ack_link=ack,
        chart_png=render_excursion_png(t, c, low_c=2, high_c=8),
    )


def test_email_over_plain_smtp_carries_text_html_and_inline_chart() -> None:
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        channel = SmtpEmail(
            host="127.0.0.1",
            port=controller.port,
            security="none",
            from_address="alerts@coldchain.example",
            timeout_s=5,
        )
        receipt = channel.send(_build(), idempotency_key="esc:1234:default:t2:r0:disp:email")
    finally:
        controller.stop()

    assert receipt.state is DeliveryState.SENT and receipt.channel is Channel.EMAIL
    ((mail_from, rcpt, raw),) = inbox.messages
    assert mail_from == "alerts@coldchain.example" and rcpt == ["dispatch@example.com"]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/related"
    assert message["Subject"].startswith("[CRITICAL] Alert 1234: SO-1001")
    assert message["Message-ID"] == receipt.provider_id
    assert message["X-Coldchain-Notification"] == "esc:1234:default:t2:r0:disp:email"

    alternative, image = message.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, rich = alternative.get_body(("plain",)), alternative.get_body(("html",))
    assert plain is not None and rich is not None
    text, page = plain.get_content(), rich.get_content()
    assert "above 8.0 °C for 32 min" in text and "https://coldchain.example/ack?token=abc" in text
    assert "ACK 1234" in text and "09506000134352 / A123" in text
    assert "cid:excursion-chart" in page and "https://coldchain.example/ack?token=abc" in page
    assert image.get_content_type() == "image/png"
    assert image["Content-ID"] == "<excursion-chart>"
    assert image.get_content_disposition() == "inline"
    png = image.get_content()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_dimensions(png) == (480, 180)
    assert _decode_png(png).shape == (180, 480, 3)


def test_email_message_id_is_stable_per_notification() -> None:
    assert _build()["Message-ID"] == _build()["Message-ID"]


def test_email_over_starttls_with_login(tls_files: tuple[Path, Path]) -> None:
    inbox = _Inbox()
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        logins.append((auth_data.login, auth_data.password))
        ok = (auth_data.login, auth_data.password) == (b"mailer", b"s3cret-pass")
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=_server_context(tls_files),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        good = SmtpEmail(
            host="127.0.0.1",
            port=controller.port,
            security="starttls",
            user="mailer",
            password="s3cret-pass",
            from_address="alerts@coldchain.example",
            ssl_context=_client_context(tls_files[0]),
            timeout_s=5,
        )
        good.send(_build(), idempotency_key="k1")
        bad = SmtpEmail(
            host="127.0.0.1",
            port=controller.port,
            security="starttls",
            user="mailer",
            password="wrong-pass",
            from_address="alerts@coldchain.example",
            ssl_context=_client_context(tls_files[0]),
            timeout_s=5,
        )
        with pytest.raises(DeliveryError) as caught:
            bad.send(_build(), idempotency_key="k2")
    finally:
        controller.stop()
    assert len(inbox.messages) == 1
    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN) before giving up.
    assert logins[0] == (b"mailer", b"s3cret-pass")
    assert logins[1:] and set(logins[1:]) == {(b"mailer", b"wrong-pass")}
    assert caught.value.status == 535 and not caught.value.retryable
    assert "s3cret-pass" not in repr(good) and "wrong-pass" not in str(caught.value)


def test_email_over_implicit_tls(tls_files: tuple[Path, Path]) -> None:
    inbox = _Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), ssl_context=_server_context(tls_files)
    )
    controller.start()
    try:
        SmtpEmail(
            host="127.0.0.1",
            port=controller.port,
            security="tls",
            from_address="alerts@coldchain.example",
            ssl_context=_client_context(tls_files[0]),
            timeout_s=5,
        ).send(_build(ack=None), idempotency_key="k")
    finally:
        controller.stop()
    ((_, _, raw),) = inbox.messages
    assert b"Acknowledge" not in raw


@pytest.mark.parametrize(("answer", "retryable"), [("550 no such user", False), ("451 later", True)])
def test_refused_recipient_is_permanent_or_temporary(answer: str, retryable: bool) -> None:
    controller = Controller(_Inbox(rcpt_answer=answer), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        channel = SmtpEmail(
            host="127.0.0.1",
            port=controller.port,
            security="none",
            from_address="alerts@coldchain.example",
            timeout_s=5,
        )
        with pytest.raises(DeliveryError) as caught:
            channel.send(_build(), idempotency_key="k")
    finally:
        controller.stop()
    assert caught.value.retryable is retryable


def test_unreachable_smtp_server_is_retryable() -> None:
    channel = SmtpEmail(
        host="127.0.0.1",
        port=free_port(),
        security="none",
        from_address="alerts@coldchain.example",
        timeout_s=2,
    )
    with pytest.raises(DeliveryError) as caught:
        channel.send(_build(), idempotency_key="k")
    assert caught.value.retryable and not caught.value.ambiguous


def test_smtp_password_is_refused_without_tls_off_loopback() -> None:
    with pytest.raises(ConfigurationError):
        SmtpEmail(
            host="smtp.example.com",
            security="none",
            user="u",
            password="p",
            from_address="alerts@coldchain.example",
        )


# -- webhooks ----------------------------------------------------------------------------------


def test_webhook_signature_round_trip_and_tamper_detection(receiver: Any) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/coldchain?team=qa"
    endpoint = WebhookEndpoint(url=url, secret="whsec-test-secret")
    assert "whsec-test-secret" not in repr(endpoint)
    sender = WebhookSender(timeout_s=5, clock=lambda: 1_795_515_300.0)
    receipt = sender.send(endpoint, {"alert": 1234, "severity": "critical"}, idempotency_key="wh:1234:1")
    assert receipt.state is DeliveryState.DELIVERED

    ((path, headers, body),) = receiver.received
    assert path == "/hooks/coldchain?team=qa"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Coldchain-Delivery"] == "wh:1234:1"
    timestamp, signature = headers["X-Coldchain-Timestamp"], headers["X-Coldchain-Signature"]
    assert timestamp == "1795515300"
    assert signature == sign_webhook("whsec-test-secret", body, 1_795_515_300)
    now = 1_795_515_360.0
    verify_webhook_signature("whsec-test-secret", body, timestamp, signature, now=now)
    # Rotation: the receiver may be sent several candidates.
    verify_webhook_signature("whsec-test-secret", body, timestamp, f"v1=00ff, {signature}", now=now)

    for tampered_body, ts, sig, secret in [
        (body.replace(b"1234", b"1235"), timestamp, signature, "whsec-test-secret"),
        (body, str(int(timestamp) + 1), signature, "whsec-test-secret"),
        (body, timestamp, signature, "another-secret"),
        (body, timestamp, signature.replace("v1=", "v0="), "whsec-test-secret"),
        (body, "not-a-number", signature, "whsec-test-secret"),
    ]:
        with pytest.raises(SignatureError):
            verify_webhook_signature(secret, tampered_body, ts, sig, now=now)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_webhook_signature("whsec-test-secret", body, timestamp, signature, now=now + 600)


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (400, False), (302, False)])
def test_webhook_failures_map_to_retryable_or_permanent(receiver: Any, status: int, retryable: bool) -> None:
    receiver.answer = (status, {"Retry-After": "30", "Location": "http://elsewhere.example/"})
    endpoint = WebhookEndpoint(url=f"http://127.0.0.1:{receiver.server_address[1]}/h", secret="s")
    with pytest.raises(DeliveryError) as caught:
        WebhookSender(timeout_s=5).send(endpoint, b'{"a":1}', idempotency_key="k")
    assert caught.value.retryable is retryable and caught.value.status == status
    assert caught.value.retry_after_s == 30.0
    assert len(receiver.received) == 1  # no redirect followed


def test_unreachable_webhook_is_retryable() -> None:
    endpoint = WebhookEndpoint(url=f"http://127.0.0.1:{free_port()}/h", secret="s")
    with pytest.raises(DeliveryError) as caught:
        WebhookSender(timeout_s=2).send(endpoint, {"a": 1}, idempotency_key="k")
    assert caught.value.retryable and not caught.value.ambiguous


# -- acknowledge links -------------------------------------------------------------------------


def test_ack_link_valid_expired_and_tampered() -> None:
    now = T0.timestamp()
    token = issue_ack_token(LINK_SECRET, alert_id=1234, contact_id="disp-1", ttl_s=3600, now=now)
    claims = verify_ack_token(LINK_SECRET, token, now=now + 3599)
    assert (claims.alert_id, claims.contact_id, claims.expires) == (1234, "disp-1", now + 3600)
    assert len(claims.nonce) >= 16
    # Every link gets its own nonce, which the database stores when the link is used.
    other = issue_ack_token(LINK_SECRET, alert_id=1234, contact_id="disp-1", ttl_s=3600, now=now)
    assert verify_ack_token(LINK_SECRET, other, now=now).nonce != claims.nonce

    with pytest.raises(AckLinkExpired):
        verify_ack_token(LINK_SECRET, token, now=now + 3600)

    payload, _, mac = token.partition(".")
    forged = issue_ack_token(b"x" * 32, alert_id=1234, contact_id="disp-1", now=now)
    candidates = [
        payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac,
        payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"),
        forged,
        payload,
        "",
        "a.b.c",
    ]
    for bad in candidates:
        with pytest.raises(AckLinkInvalid):
            verify_ack_token(LINK_SECRET, bad, now=now)
    with pytest.raises(ConfigurationError):
        issue_ack_token(b"short", alert_id=1, contact_id="c")


def test_ack_url_carries_the_token_and_redacts_for_logs() -> None:
    token = issue_ack_token(LINK_SECRET, alert_id=9, contact_id="c", now=T0.timestamp())
    url = ack_url("https://coldchain.example/api/v1/ack", token)
    assert parse_qs(urlsplit(url).query)["token"] == [token]
    redacted = redact_ack_url(url)
    assert token not in redacted and redacted.startswith("https://coldchain.example/api/v1/ack?")
    assert (
        verify_ack_token(LINK_SECRET, parse_qs(urlsplit(url).query)["token"][0], now=T0.timestamp()).alert_id
        == 9
    )
