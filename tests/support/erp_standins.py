"""Local HTTP stand-ins for the ERPs the outbox pushes to, each implementing the endpoints the
adapters call as the vendor documents them, with their answers and their errors:

- `OdooStandIn`: `POST /jsonrpc`, JSON-RPC 2.0 `call` with service `common` (`login`,
  `authenticate`, `version`) and `object` (`execute_kw`: search, search_read, search_count, read,
  create, message_post), errors as Odoo's error object (code 200, "Odoo Server Error", data.name
  the exception's class).
- `FrappeStandIn`: token authentication, `GET /api/resource/{doctype}[/{name}]` (filters,
  fields), `POST /api/resource/Comment`, `POST /api/method/upload_file` (multipart), errors as
  Frappe answers them (401 AuthenticationError, 404 DoesNotExistError, 417 ValidationError).
- `WebhookReceiver`: records signed deliveries and answers what the test scripts.

Every stand-in records what it received, can answer 503 to the next N requests, and can drop the
connection after doing the work of the next N (the ERP committed, the sender saw no answer).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import fnmatch
import hashlib
import html
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Base:
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0  # answer 503 to this many requests
    drop_after_next: int = 0  # do the work of this many requests, then close without answering
    drop_once: Callable[[Received], bool] | None = None  # the same, once, for the first request it matches
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    standin: _Base

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        stand = self.standin
        with stand.lock:
            stand.received.append(req)
            if stand.fail_next > 0:
                stand.fail_next -= 1
                self._answer(503, {"Content-Type": "text/html"}, b"<html>503 Service Unavailable</html>")
                return
            try:
                status, headers, out = stand.handle(req)
            except Exception as exc:  # a stand-in bug shows as a server error, as a real server's would
                status, headers, out = 500, {"Content-Type": "text/plain"}, repr(exc).encode()
            drop = stand.drop_once is not None and stand.drop_once(req)
            if drop:
                stand.drop_once = None
            if stand.drop_after_next > 0 or drop:
                stand.drop_after_next = max(0, stand.drop_after_next - 1)
                self.close_connection = True
                self.connection.close()
                return
        self._answer(status, headers, out)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _serve
    do_POST = _serve


@contextmanager
def serve(standin: _Base) -> Iterator[str]:
    """Run the stand-in on a free local port; yields its base URL."""
    handler = type("Handler", (_Handler,), {"standin": standin})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _json(status: int, doc: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, orjson.dumps(doc)


# -- Odoo ------------------------------------------------------------------------------------------


class OdooError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


def _matches(record: dict[str, Any], domain: list[Any]) -> bool:
    for term in domain:
        if isinstance(term, str):  # '&' (the default) only
            if term != "&":
                raise OdooError("builtins.ValueError", f"unsupported domain operator {term}")
            continue
        name, op, value = term
        have = record.get(name)
        if op == "=":
            ok = have == value
        elif op == "in":
            ok = have in value
        elif op == "ilike":
            ok = isinstance(have, str) and str(value).lower() in have.lower()
        else:
            raise OdooError("builtins.ValueError", f"Invalid leaf {term}")
        if not ok:
            return False
    return True


@dataclass
class OdooStandIn(_Base):
    database: str = "prod"
    login: str = "erp-bot@example.com"
    api_key: str = "odoo-api-key-1"
    uid: int = 7
    models: dict[str, dict[int, dict[str, Any]]] = field(
        default_factory=lambda: {
            "stock.picking": {},
            "stock.lot": {},
            "ir.attachment": {},
            "mail.message": {},
        }
    )
    _next: int = 100

    def add(self, model: str, /, **values: Any) -> int:
        self._next += 1
        self.models[model][self._next] = {"id": self._next, **values}
        return self._next

    def find(self, model: str, /, **values: Any) -> list[dict[str, Any]]:
        return [r for r in self.models[model].values() if all(r.get(k) == v for k, v in values.items())]

    def handle(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        if req.method != "POST" or urlsplit(req.path).path != "/jsonrpc":
            return 404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>"
        call = orjson.loads(req.body)
        rid = call.get("id")
        try:
            params = call["params"]
            result = self._dispatch(params["service"], params["method"], params.get("args", []))
        except OdooError as exc:
            return _json(
                200,
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "error": {
                        "code": 200,
                        "message": "Odoo Server Error",
                        "data": {
                            "name": exc.name,
                            "debug": f"Traceback (most recent call last):\n{exc.name}: {exc.message}\n",
                            "message": exc.message,
                            "arguments": [exc.message],
                            "context": {},
                        },
                    },
                },
            )
        return _json(200, {"jsonrpc": "2.0", "id": rid, "result": result})

    def _dispatch(self, service: str, method: str, args: list[Any]) -> Any:
        if service == "common":
            if method == "version":
                return {
                    "server_version": "17.0",
                    "server_version_info": [17, 0, 0, "final", 0, ""],
                    "server_serie": "17.0",
                    "protocol_version": 1,
                }
            if method in ("login", "authenticate"):
                db, login, password = args[0], args[1], args[2]
                return (
                    self.uid if (db, login, password) == (self.database, self.login, self.api_key) else False
                )
            raise OdooError("builtins.NameError", f"Method not available {method}")
        if service != "object" or method not in ("execute_kw", "execute"):
            raise OdooError("builtins.NameError", f"Method not available {method}")
        db, uid, password, model, name = args[:5]
        call_args = args[5] if len(args) > 5 else []
        kwargs = args[6] if len(args) > 6 else {}
        if db != self.database or uid != self.uid or password != self.api_key:
            raise OdooError("odoo.exceptions.AccessDenied", "Access Denied")
        if model not in self.models:
            raise OdooError("builtins.KeyError", repr(model))
        return self._orm(model, name, call_args, kwargs)

    def _orm(self, model: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        table = self.models[model]
        if method in ("search", "search_read", "search_count"):
            domain = args[0] if args else kwargs.get("domain", [])
            found = [r for r in sorted(table.values(), key=lambda r: r["id"]) if _matches(r, domain)]
            if method == "search_count":
                return len(found)
            offset = int(kwargs.get("offset", 0))
            limit = kwargs.get("limit")
            found = found[offset : None if limit is None else offset + int(limit)]
            if method == "search":
                return [r["id"] for r in found]
            fields = kwargs.get("fields")
            return [{k: v for k, v in r.items() if not fields or k in fields or k == "id"} for r in found]
        if method == "read":
            return [table[i] for i in args[0] if i in table]
        if method == "create":
            values = args[0]
            many = isinstance(values, list)
            made = [self._create(model, v) for v in (values if many else [values])]
            return made if many else made[0]
        if method == "message_post" and model in ("stock.picking", "stock.lot"):
            ids = args[0]
            if len(ids) != 1 or ids[0] not in table:
                raise OdooError("odoo.exceptions.MissingError", "Record does not exist or has been deleted.")
            for aid in kwargs.get("attachment_ids", []):
                if aid not in self.models["ir.attachment"]:
                    raise OdooError(
                        "odoo.exceptions.MissingError", "Record does not exist or has been deleted."
                    )
            # RPC bodies are plain text: Odoo escapes them into the HTML body.
            return self.add(
                "mail.message",
                model=model,
                res_id=ids[0],
                body=f"<p>{html.escape(kwargs.get('body', ''))}</p>",
                message_type=kwargs.get("message_type", "notification"),
                subtype_xmlid=kwargs.get("subtype_xmlid"),
                attachment_ids=list(kwargs.get("attachment_ids", [])),
            )
        raise OdooError(
            "builtins.AttributeError", f"The method '{method}' does not exist on the model '{model}'"
        )

    def _create(self, model: str, values: dict[str, Any]) -> int:
        if model == "ir.attachment":
            res_model, res_id = values.get("res_model"), values.get("res_id")
            if res_model and res_id not in self.models.get(res_model, {}):
                raise OdooError("odoo.exceptions.MissingError", "Record does not exist or has been deleted.")
            raw = base64.b64decode(values.get("datas") or b"", validate=True)
            return self.add(model, **values, raw=raw, file_size=len(raw))
        return self.add(model, **values)


# -- ERPNext (Frappe) ------------------------------------------------------------------------------


@dataclass
class FrappeStandIn(_Base):
    api_key: str = "3f1a9c"
    api_secret: str = "frappe-secret-1"
    docs: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"Delivery Note": {}, "Batch": {}, "File": {}, "Comment": {}}
    )
    _next: int = 0

    def add(self, doctype: str, name: str | None = None, /, **values: Any) -> str:
        self._next += 1
        name = name or hashlib.sha1(f"{doctype}{self._next}".encode()).hexdigest()[:10]
        self.docs[doctype][name] = {"name": name, "doctype": doctype, **values}
        return name

    def _error(self, status: int, exc_type: str, message: str) -> tuple[int, dict[str, str], bytes]:
        return _json(
            status,
            {
                "exc_type": exc_type,
                "exception": f"frappe.exceptions.{exc_type}: {message}",
                "_server_messages": orjson.dumps([orjson.dumps({"message": message}).decode()]).decode(),
            },
        )

    def handle(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        if req.headers.get("authorization") != f"token {self.api_key}:{self.api_secret}":
            return self._error(401, "AuthenticationError", "Invalid API key or secret")
        parts = urlsplit(req.path)
        path = unquote(parts.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if req.method == "POST" and path == "/api/method/upload_file":
            return self._upload(req)
        if path.startswith("/api/resource/"):
            rest = path[len("/api/resource/") :]
            doctype, _, name = rest.partition("/")
            if doctype not in self.docs:
                return self._error(404, "DoesNotExistError", f"DocType {doctype} not found")
            if req.method == "GET" and name:
                found = self.docs[doctype].get(name)
                if found is None:
                    return self._error(404, "DoesNotExistError", f"{doctype} {name} not found")
                return _json(200, {"data": found})
            if req.method == "GET":
                return _json(200, {"data": self._list(doctype, query)})
            if req.method == "POST" and doctype == "Comment":
                return self._comment(orjson.loads(req.body))
        return self._error(404, "DoesNotExistError", "Not found")

    def _list(self, doctype: str, query: dict[str, str]) -> list[dict[str, Any]]:
        filters = orjson.loads(query.get("filters", "[]"))
        fields = orjson.loads(query.get("fields", '["name"]'))
        limit = int(query.get("limit_page_length", "20"))
        out = []
        for doc in self.docs[doctype].values():
            ok = True
            for name, op, value in filters:
                have = doc.get(name)
                if op == "=":
                    ok &= have == value
                elif op == "like":
                    ok &= isinstance(have, str) and fnmatch.fnmatchcase(have, value.replace("%", "*"))
                else:
                    raise AssertionError(f"operator {op} not implemented by the stand-in")
            if ok:
                out.append({f: doc.get(f) for f in fields})
        return out[:limit]

    def _comment(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if body.get("comment_type") not in ("Comment", "Like", "Info", "Label", "Workflow"):
            return self._error(417, "ValidationError", "Comment Type cannot be empty or is not valid")
        ref_type, ref_name = body.get("reference_doctype"), body.get("reference_name")
        if ref_type not in self.docs or ref_name not in self.docs[ref_type]:
            return self._error(417, "LinkValidationError", f"Could not find Reference Name: {ref_name}")
        name = self.add(
            "Comment",
            **{k: body.get(k) for k in ("comment_type", "reference_doctype", "reference_name", "content")},
        )
        return _json(200, {"data": self.docs["Comment"][name]})

    def _upload(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        raw = b"Content-Type: " + req.headers["content-type"].encode() + b"\r\n\r\n" + req.body
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        form: dict[str, str] = {}
        content: bytes | None = None
        filename = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                content, filename = payload, part.get_filename()
            elif isinstance(name, str):
                form[name] = payload.decode()
        if content is None:
            return self._error(417, "ValidationError", "No file attached")
        doctype, docname = form.get("doctype"), form.get("docname")
        if doctype and (doctype not in self.docs or docname not in self.docs[doctype]):
            return self._error(404, "DoesNotExistError", f"{doctype} {docname} not found")
        private = form.get("is_private") == "1"
        file_name = filename or "file"  # Frappe names the File by the uploaded part's filename
        name = self.add(
            "File",
            file_name=file_name,
            is_private=int(private),
            file_url=("/private/files/" if private else "/files/") + file_name,
            attached_to_doctype=doctype,
            attached_to_name=docname,
            file_size=len(content),
            content_hash=hashlib.md5(content).hexdigest(),
            content=content,
        )
        doc = {k: v for k, v in self.docs["File"][name].items() if k != "content"}
        return _json(200, {"message": doc})


# -- a webhook receiver ----------------------------------------------------------------------------


@dataclass
class WebhookReceiver(_Base):
    status: int = 200

    def handle(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        return _json(self.status, {"received": True})
