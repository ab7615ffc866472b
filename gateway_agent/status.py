"""What the driver sees: the `gateway-agent status` text and a tiny status page on 127.0.0.1."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_text(snapshot: dict[str, Any]) -> str:
    """The status as a few lines a driver can read at a glance."""
    alarms = snapshot.get("alarms") or []
    lines = [
        f"ALARM: {', '.join(alarms)}" if alarms else "alarm: none",
        f"updated: {_when(snapshot.get('updated_ms'))}",
    ]
    if snapshot.get("battery") is not None:
        lines.append(f"battery: {snapshot['battery']:.0%}")
    for device_id, dev in (snapshot.get("devices") or {}).items():
        reading = "no reading yet"
        if dev.get("c") is not None:
            rh = f", {dev['rh']:.1f} %RH" if dev.get("rh") is not None else ""
            reading = f"{dev['c']:.2f} °C{rh} at {_when(dev.get('t_ms'))}"
        link = "online" if dev.get("connected") else "offline"
        lines.append(
            f"{device_id}: {reading}; queue {dev.get('queue_readings', 0)} readings "
            f"({dev.get('queue_batches', 0)} batches); {link}, last contact "
            f"{_when(dev.get('last_contact_ms'))}; config v{dev.get('config_version', 0)}"
        )
        if dev.get("alarms"):
            lines.append(f"  alarm: {', '.join(dev['alarms'])}")
        if dev.get("sensor_error"):
            lines.append(f"  sensor error: {dev['sensor_error']}")
    return "\n".join(lines)


def render_html(snapshot: dict[str, Any]) -> str:
    body = html.escape(render_text(snapshot))
    colour = "#b00020" if snapshot.get("alarms") else "#1b5e20"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='10'>"
        "<title>coldchain gateway</title></head>"
        f"<body style='font-family:sans-serif'><h1 style='color:{colour}'>coldchain gateway</h1>"
        f"<pre style='font-size:1.3em'>{body}</pre></body></html>"
    )


class StatusServer:
    """A read-only page (/ as HTML, /status.json) bound to 127.0.0.1 only, in its own thread."""

    def __init__(
        self, *, port: int, snapshot: Callable[[], dict[str, Any]], host: str = "127.0.0.1"
    ) -> None:
        get = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/status.json":
                    body, kind = json.dumps(get()).encode(), "application/json"
                elif self.path == "/":
                    body, kind = render_html(get()).encode(), "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gateway-status", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
