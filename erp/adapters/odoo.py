"""Odoo through its external JSON-RPC API (`POST /jsonrpc`): `common.login` for the user id, then
`object.execute_kw(db, uid, api_key, model, method, args, kwargs)` for everything else.

A shipment is the `stock.picking` whose `name` (else `origin`) is the shipment's ERP reference;
a lot is the `stock.lot` of that name. Files become `ir.attachment` records on it (`res_model`,
`res_id`, base64 `datas`), and the event a note in its chatter (`message_post`) that links them.
Each attachment's `description` and the note's text carry the delivery's idempotency key, which
is what a redelivery searches for before it creates anything.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from erp.adapters import DeliveryFailed, OutboundEvent, TargetRecord
from erp.adapters.http import request, retryable_status

# Odoo exceptions that another attempt will not cure (the error's data.name).
_PERMANENT: Final = frozenset(
    {
        "odoo.exceptions.AccessDenied",
        "odoo.exceptions.AccessError",
        "odoo.exceptions.UserError",
        "odoo.exceptions.ValidationError",
        "odoo.exceptions.MissingError",
        "werkzeug.exceptions.NotFound",
    }
)
_MODELS: Final = {"shipment": "stock.picking", "lot": "stock.lot"}


@dataclass(slots=True)
class OdooAdapter:
    url: str
    database: str
    login: str
    api_key: str = field(repr=False)
    timeout_s: float = 30.0
    allow_private: bool = False
    _uid: int | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def _rpc(self, service: str, method: str, args: list[Any]) -> Any:
        call = {
            "jsonrpc": "2.0",
            "method": "call",
            "params": {"service": service, "method": method, "args": args},
            "id": next(self._ids),
        }
        answer = request(
            self.url.rstrip("/") + "/jsonrpc",
            body=orjson.dumps(call),
            headers={"Content-Type": "application/json"},
            timeout_s=self.timeout_s,
            allow_private=self.allow_private,
        )
        if answer.status != 200:
            raise DeliveryFailed(
                f"Odoo answered HTTP {answer.status}", retryable=retryable_status(answer.status)
            )
        doc = answer.json()
        error = doc.get("error") if isinstance(doc, dict) else None
        if error is not None:
            data = error.get("data") or {}
            name = str(data.get("name", ""))
            message = str(data.get("message") or error.get("message") or "error")
            raise DeliveryFailed(
                f"Odoo {service}.{method}: {name}: {message}"[:500], retryable=name not in _PERMANENT
            )
        if not isinstance(doc, dict) or "result" not in doc:
            raise DeliveryFailed("Odoo's answer has neither result nor error", retryable=True)
        return doc["result"]

    def _user(self) -> int:
        if self._uid is None:
            uid = self._rpc("common", "login", [self.database, self.login, self.api_key])
            if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
                raise DeliveryFailed("Odoo refused the login (database, login or API key)", retryable=False)
            self._uid = uid
        return self._uid

    def execute_kw(
        self, model: str, method: str, args: list[Any], kwargs: dict[str, Any] | None = None
    ) -> Any:
        return self._rpc(
            "object",
            "execute_kw",
            [self.database, self._user(), self.api_key, model, method, args, kwargs or {}],
        )

    def _record_id(self, model: str, target: TargetRecord) -> int:
        found = self.execute_kw(model, "search", [[["name", "=", target.ref]]], {"limit": 1})
        if not found and target.kind == "shipment":
            found = self.execute_kw(model, "search", [[["origin", "=", target.ref]]], {"limit": 1})
        if not found:
            # Not (yet) in the ERP: retried with backoff, the error says what is missing.
            raise DeliveryFailed(f"Odoo has no {model} named {target.ref!r}", retryable=True)
        return int(found[0])

    def deliver(self, event: OutboundEvent) -> str | None:
        made: list[str] = []
        for target in event.targets:
            model = _MODELS[target.kind]
            res_id = self._record_id(model, target)
            attachment_ids: list[int] = []
            for item in target.attachments:
                marker = f"{event.idempotency_key} {item.name}"
                found = self.execute_kw(
                    "ir.attachment",
                    "search",
                    [[["res_model", "=", model], ["res_id", "=", res_id], ["description", "=", marker]]],
                    {"limit": 1},
                )
                if found:
                    attachment_ids.append(int(found[0]))
                    continue
                created = self.execute_kw(
                    "ir.attachment",
                    "create",
                    [
                        {
                            "name": item.name,
                            "datas": base64.b64encode(item.content).decode("ascii"),
                            "res_model": model,
                            "res_id": res_id,
                            "mimetype": item.mimetype,
                            "description": marker,
                        }
                    ],
                )
                attachment_ids.append(int(created[0] if isinstance(created, list) else created))
            posted = self.execute_kw(
                "mail.message",
                "search",
                [[["model", "=", model], ["res_id", "=", res_id], ["body", "ilike", event.idempotency_key]]],
                {"limit": 1},
            )
            if not posted:
                posted = [
                    self.execute_kw(
                        model,
                        "message_post",
                        [[res_id]],
                        {
                            "body": f"{event.summary} (coldchain {event.idempotency_key})",
                            "message_type": "comment",
                            "subtype_xmlid": "mail.mt_note",
                            "attachment_ids": attachment_ids,
                        },
                    )
                ]
            made.append(f"{model}:{res_id}:mail.message:{int(posted[0])}")
        return ";".join(made) or None
