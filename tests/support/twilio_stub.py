"""A local stand-in for Twilio's REST API (Messages and Calls) for tests and the benchmark.

It answers what the official SDK calls, `POST /2010-04-01/Accounts/{sid}/Messages.json` and
`.../Calls.json`, with Twilio-shaped JSON, records every request (form fields, Basic auth), can
be told to fail the next requests with a chosen status, and can send signed status callbacks the
way Twilio does. Run it alone with `python tests/support/twilio_stub.py --port 8099`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from twilio.request_validator import RequestValidator

_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-fA-F]{32})/(?P<kind>Messages|Calls)\.json$")


@dataclass(frozen=True)
class StubRequest:
    """One request the stub received."""

    kind: str  # "Messages" or "Calls"
    account_sid: str
    username: str | None
    password: str | None
    form: dict[str, list[str]]
    headers: dict[str, str]
    received_at: float
    sid: str | None = None

    def field(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


@dataclass
class _Failure:
    status: int
    code: int
    message: str


@dataclass
class _State:
    requests: list[StubRequest] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.received = threading.Condition(self.lock)


class TwilioStub:
    """Start with `with TwilioStub(account_sid=..., auth_token=...) as stub:`; use
    `stub.base_url` as TWILIO_API_BASE_URL."""

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "stub-auth-token",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._state = _State()
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="twilio-stub", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> TwilioStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TwilioStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the test steers and reads ---------------------------------------------------------

    def fail_next(self, status: int, *, code: int = 20500, message: str = "", count: int = 1) -> None:
        """Answer the next `count` requests with an error of HTTP `status` and Twilio `code`."""
        with self._state.lock:
            for _ in range(count):
                self._state.failures.append(_Failure(status, code, message or f"stub {status}"))

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering (to provoke client timeouts)."""
        with self._state.lock:
            self._state.delay_s = seconds

    @property
    def requests(self) -> list[StubRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[StubRequest]:
        """Block until at least `count` requests arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout_s
        with self._state.received:
            while len(self._state.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.received.wait(left)
            return list(self._state.requests)

    def send_status_callback(
        self, sid: str, status: str, *, error_code: str | None = None, timeout_s: float = 5.0
    ) -> int:
        """POST a signed status callback for message/call `sid`, as Twilio would; HTTP status."""
        request = next((r for r in self.requests if r.sid == sid), None)
        if request is None or not request.field("StatusCallback"):
            raise LookupError(f"no request with a StatusCallback for {sid}")
        url = request.field("StatusCallback") or ""
        if request.kind == "Messages":
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": self.account_sid,
                "To": request.field("To") or "",
                "From": request.field("From") or "",
                "ApiVersion": "2010-04-01",
            }
        else:
            params = {
                "CallSid": sid,
                "CallStatus": status,
                "AccountSid": self.account_sid,
                "To": request.field("To") or "",
                "From": request.field("From") or "",
                "ApiVersion": "2010-04-01",
            }
        if error_code:
            params["ErrorCode"] = error_code
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        post = urllib.request.Request(
            url,
            data=urllib.parse.urlencode(params).encode(),
            headers={"X-Twilio-Signature": signature},
            method="POST",
        )
        try:
            with urllib.request.urlopen(post, timeout=timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    # -- what the handler calls ------------------------------------------------------------------

    def _record(self, request: StubRequest) -> tuple[int, dict[str, Any]]:
        with self._state.lock:
            failure = self._state.failures.pop(0) if self._state.failures else None
            delay = self._state.delay_s
        if delay:
            time.sleep(delay)
        authenticated = (
            request.username == self.account_sid == request.account_sid
            and request.password == self.auth_token
        )
        if not authenticated:
            body: dict[str, Any] = _error(401, 20003, "Authenticate")
            status = 401
        elif failure is not None:
            status, body = failure.status, _error(failure.status, failure.code, failure.message)
        else:
            status = 201
            prefix = "SM" if request.kind == "Messages" else "CA"
            sid = prefix + secrets.token_hex(16)
            request = dataclasses.replace(request, sid=sid)
            body = (
                _message(self.account_sid, sid, request)
                if request.kind == "Messages"
                else _call(self.account_sid, sid, request)
            )
        with self._state.received:
            self._state.requests.append(request)
            self._state.received.notify_all()
        return status, body


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _message(account_sid: str, sid: str, request: StubRequest) -> dict[str, Any]:
    now = formatdate(usegmt=True)
    service = request.field("MessagingServiceSid")
    body = request.field("Body") or ""
    return {
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": request.field("From"),
        "messaging_service_sid": service,
        "num_media": "0",
        "num_segments": str(max(1, -(-len(body) // 153))),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "accepted" if service and not request.field("From") else "queued",
        "subresource_uris": {"media": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json"},
        "to": request.field("To"),
        "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
    }


def _call(account_sid: str, sid: str, request: StubRequest) -> dict[str, Any]:
    now = formatdate(usegmt=True)
    return {
        "account_sid": account_sid,
        "annotation": None,
        "answered_by": None,
        "api_version": "2010-04-01",
        "caller_name": None,
        "date_created": now,
        "date_updated": now,
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": request.field("From"),
        "from_formatted": request.field("From"),
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "start_time": None,
        "status": "queued",
        "subresource_uris": {},
        "to": request.field("To"),
        "to_formatted": request.field("To"),
        "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json",
    }


def _make_handler(stub: TwilioStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK add about 40 ms to every keep-alive response.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests read `stub.requests` instead

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Twilio-Request-Id", "RQ" + secrets.token_hex(16))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if len(raw) < length:
                # The client died mid-request (a killed notifier): Twilio would never have
                # accepted a cut-off form, so neither does the stub.
                self.close_connection = True
                return
            match = _PATH.match(urllib.parse.urlsplit(self.path).path)
            if match is None:
                self._reply(404, _error(404, 20404, "The requested resource was not found"))
                return
            username = password = None
            auth = self.headers.get("Authorization") or ""
            if auth.startswith("Basic "):
                decoded = base64.b64decode(auth[6:]).decode()
                username, _, password = decoded.partition(":")
            request = StubRequest(
                kind=match.group("kind"),
                account_sid=match.group("sid"),
                username=username,
                password=password,
                form=urllib.parse.parse_qs(raw.decode(), keep_blank_values=True),
                headers={k: v for k, v in self.headers.items() if k.lower() != "authorization"},
                received_at=time.time(),
            )
            status, body = stub._record(request)
            self._reply(status, body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--account-sid", default="AC" + "0" * 32)
    parser.add_argument("--auth-token", default="stub-auth-token")
    args = parser.parse_args()
    stub = TwilioStub(
        account_sid=args.account_sid, auth_token=args.auth_token, host=args.host, port=args.port
    )
    print(json.dumps({"twilio_api_base_url": stub.base_url}), flush=True)
    try:
        stub._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stub._server.server_close()


if __name__ == "__main__":
    main()
