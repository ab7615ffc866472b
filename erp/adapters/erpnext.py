"""ERPNext (Frappe) through its REST API, authenticated with `Authorization: token key:secret`.

A shipment is the Delivery Note named by the shipment's ERP reference; a lot is the Batch of that
number. Files go up with `POST /api/method/upload_file` (multipart: file, doctype, docname,
is_private) and the event becomes a Comment (`POST /api/resource/Comment`, comment_type
"Comment"). Before creating, a redelivery looks the File up by its name on the record and the
Comment by the idempotency key in its content, so nothing is made twice.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlencode

import orjson

from erp.adapters import DeliveryFailed, OutboundEvent, TargetRecord
from erp.adapters.http import Response, multipart, request, retryable_status

_DOCTYPES: Final = {"shipment": "Delivery Note", "lot": "Batch"}


@dataclass(slots=True)
class ErpNextAdapter:
    url: str
    api_key: str
    api_secret: str = field(repr=False)
    timeout_s: float = 30.0
    allow_private: bool = False

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        query: dict[str, str] | None = None,
    ) -> Response:
        headers = {"Authorization": f"token {self.api_key}:{self.api_secret}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = self.url.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        answer = request(
            url,
            method=method,
            body=body,
            headers=headers,
            timeout_s=self.timeout_s,
            allow_private=self.allow_private,
        )
        if 200 <= answer.status < 300:
            return answer
        detail = ""
        try:
            doc = orjson.loads(answer.body)
            detail = str(doc.get("exc_type") or doc.get("exception") or doc.get("message") or "")[:300]
        except (orjson.JSONDecodeError, AttributeError):
            pass
        where = path.split("?", 1)[0]
        raise DeliveryFailed(
            f"ERPNext {method} {where} answered HTTP {answer.status} {detail}".strip(),
            retryable=retryable_status(answer.status) or answer.status == 404,
        )

    def _list(self, doctype: str, filters: list[list[str]]) -> list[dict[str, Any]]:
        answer = self._call(
            "GET",
            f"/api/resource/{quote(doctype)}",
            query={"filters": orjson.dumps(filters).decode(), "fields": '["name"]', "limit_page_length": "1"},
        )
        data = answer.json().get("data")
        return data if isinstance(data, list) else []

    def _target(self, target: TargetRecord) -> str:
        doctype = _DOCTYPES[target.kind]
        try:
            self._call("GET", f"/api/resource/{quote(doctype)}/{quote(target.ref, safe='')}")
        except DeliveryFailed as exc:
            if "HTTP 404" in str(exc):  # not (yet) in the ERP: retried with backoff
                raise DeliveryFailed(f"ERPNext has no {doctype} {target.ref!r}", retryable=True) from None
            raise
        return doctype

    def deliver(self, event: OutboundEvent) -> str | None:
        made: list[str] = []
        for target in event.targets:
            doctype = self._target(target)
            for item in target.attachments:
                known = self._list(
                    "File",
                    [
                        ["attached_to_doctype", "=", doctype],
                        ["attached_to_name", "=", target.ref],
                        ["file_name", "=", item.name],
                    ],
                )
                if known:
                    continue
                body, content_type = multipart(
                    {"doctype": doctype, "docname": target.ref, "is_private": "1"},
                    {"file": (item.name, item.mimetype, item.content)},
                )
                self._call("POST", "/api/method/upload_file", body=body, content_type=content_type)
            known = self._list(
                "Comment",
                [
                    ["reference_doctype", "=", doctype],
                    ["reference_name", "=", target.ref],
                    ["content", "like", f"%{event.idempotency_key}%"],
                ],
            )
            if known:
                made.append(f"Comment:{known[0]['name']}")
                continue
            content = (
                f"<p>{html.escape(event.summary)}</p><p>coldchain {html.escape(event.idempotency_key)}</p>"
            )
            answer = self._call(
                "POST",
                "/api/resource/Comment",
                body=orjson.dumps(
                    {
                        "comment_type": "Comment",
                        "reference_doctype": doctype,
                        "reference_name": target.ref,
                        "content": content,
                    }
                ),
                content_type="application/json",
            )
            made.append(f"Comment:{answer.json().get('data', {}).get('name')}")
        return ";".join(made) or None
