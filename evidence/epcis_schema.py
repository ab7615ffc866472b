"""Checking an EPCIS 2.0 JSON/JSON-LD document: what the evidence writer promises and what a
capture accepts, with one validator.

Four kinds of check, all reported together (a capture lists every problem, not the first):

* GS1's JSON schema (`evidence/standards/EPCIS-JSON-Schema.json`, draft-07) with formats checked:
  `date-time` as RFC 3339 and `uri` as an absolute URI (scheme, colon, no spaces), so an
  un-namespaced property name or a bare word where a URI belongs fails as the schema means;
* the context: the document's `@context` must name the EPCIS 2.0 context;
* vocabulary: `bizStep`, `disposition` and persistent dispositions are CBV terms (bare, or
  `https://ref.gs1.org/cbv/BizStep-…` / `Disp-…`), or namespaced IRIs of one's own;
* extensions: a property name the standard does not define must be namespaced: a compact IRI
  whose prefix the document's `@context` defines, or a full `http(s):`/`urn:` IRI.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
import jsonschema_rs

__all__ = [
    "BIZ_STEPS",
    "DISPOSITIONS",
    "EPCIS_CONTEXT",
    "Problem",
    "cbv_term",
    "document_problems",
    "reference_validator",
    "schema",
    "validator",
]

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
# The unversioned address GS1 also publishes for the current 2.x context.
_CONTEXTS = frozenset({EPCIS_CONTEXT, "https://ref.gs1.org/standards/epcis/epcis-context.jsonld"})
_CBV_STEM = "https://ref.gs1.org/cbv/"
# Prefixes the EPCIS 2.0 context itself defines (GS1's vocabularies and the W3C ones it uses).
_CONTEXT_PREFIXES = frozenset({"epcis", "cbv", "cbvmda", "gs1", "xsd", "rdf", "rdfs", "owl", "dcterms"})
# An absolute URI (RFC 3986 §4.3): a scheme, a colon, and no spaces or control characters.
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s\x00-\x1f\x7f<>\"{}|\\^`]*$")
_COMPACT = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*):(?!//)(.+)$")
_FULL_IRI_SCHEMES = ("http", "https", "urn")
_VOCAB_FIELDS = {"bizStep": "BizStep", "disposition": "Disp"}
_MAX_PROBLEMS = 1000


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (a dotted path with [i] indexes) and what."""

    field: str
    message: str


@functools.cache
def schema() -> dict[str, Any]:
    raw = resources.files("evidence").joinpath("standards/EPCIS-JSON-Schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def _absolute_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(_ABSOLUTE_URI.match(value))


@functools.cache
def validator() -> jsonschema_rs.Draft7Validator:
    """GS1's schema with `date-time` (RFC 3339) and `uri` (an RFC 3986 absolute URI) checked, by
    jsonschema-rs's own format checks: the pure
    Python jsonschema checks about 300 sensor reports a second on this schema (its anyOf and
    propertyNames branches at every element), far too slow for a partner's 100,000-report
    document; the Rust engine gives the same verdicts (tests/test_epcis_capture.py compares them)."""
    return jsonschema_rs.Draft7Validator(schema(), validate_formats=True)


def reference_validator() -> jsonschema.Draft7Validator:
    """The same schema and formats in the Python jsonschema (date-times by rfc3339-validator, URIs
    by the absolute-URI pattern), the validator GS1's schema is most often run with: the tests
    hold the two to the same verdicts."""
    base = jsonschema.Draft7Validator.FORMAT_CHECKER
    if "date-time" not in base.checkers:
        raise RuntimeError("rfc3339-validator is not installed: EPCIS date-times cannot be checked")
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers = dict(base.checkers)
    checker.checks("uri")(_absolute_uri)
    return jsonschema.Draft7Validator(schema(), format_checker=checker)


def _enum(name: str) -> frozenset[str]:
    for option in schema()["definitions"][name]["anyOf"]:
        if "enum" in option:
            return frozenset(option["enum"])
    raise KeyError(name)


BIZ_STEPS = _enum("bizStep")
DISPOSITIONS = _enum("disposition")
_TERMS = {"bizStep": BIZ_STEPS, "disposition": DISPOSITIONS}
_VOCAB_KEYS = frozenset({"bizStep", "disposition", "persistentDisposition"})


@functools.cache
def _standard_names() -> frozenset[str]:
    """Every property name GS1's schema defines anywhere (properties and propertyNames enums)."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                names.update(props)
            pn = node.get("propertyNames")
            if isinstance(pn, dict):
                for option in pn.get("anyOf", [pn]):
                    if isinstance(option, dict) and "enum" in option:
                        names.update(option["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema())
    return frozenset(names)


_STANDARD = _standard_names()


def cbv_term(value: str, kind: str) -> str | None:
    """The bare CBV term of a bizStep or disposition value (`shipping` for `shipping` and for
    `https://ref.gs1.org/cbv/BizStep-shipping`), None when it is no CBV term."""
    terms = _TERMS[kind]
    if value in terms:
        return value
    prefix = f"{_CBV_STEM}{_VOCAB_FIELDS[kind]}-"
    if value.startswith(prefix) and value[len(prefix) :] in terms:
        return value[len(prefix) :]
    return None


def _path(parts: Iterator[Any] | list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _prefixes(context: object) -> set[str]:
    """Prefixes a JSON-LD context defines: keys of its objects (a term mapped to an IRI)."""
    found: set[str] = set()
    items = context if isinstance(context, list) else [context]
    for item in items:
        if isinstance(item, dict):
            found.update(k for k in item if isinstance(k, str) and not k.startswith("@"))
    return found


def _namespaced(name: str, prefixes: set[str]) -> bool:
    m = _COMPACT.match(name)
    if m is not None and m.group(1) in prefixes:
        return True
    scheme, sep, rest = name.partition(":")
    return bool(sep) and scheme.lower() in _FULL_IRI_SCHEMES and bool(rest) and _absolute_uri(name)


def _vocab_problem(field: str, value: object, kind: str, prefixes: set[str]) -> Problem | None:
    if not isinstance(value, str):
        return None  # the schema reports the type
    if cbv_term(value, kind) is not None:
        return None
    if value.startswith(_CBV_STEM) or value.startswith("urn:epcglobal:cbv"):
        return Problem(field, f"{value!r} is not a CBV 2.0 {kind}")
    if _namespaced(value, prefixes):
        return None
    return Problem(
        field,
        f"{kind} {value!r} is neither a CBV term nor a namespaced IRI"
        " (a prefix defined in @context, or a full http(s)/urn IRI)",
    )


def _walk(node: object, path: list[Any], prefixes: set[str], out: list[Problem], flagged: set[str]) -> None:
    if isinstance(node, dict):
        local = prefixes | _prefixes(node["@context"]) if "@context" in node else prefixes
        # Most objects hold only standard names and no vocabulary: one set difference in C each.
        for key in node.keys() - _STANDARD:
            if key != "@context" and not _namespaced(key, local):
                flagged.add(_path(path))
                out.append(
                    Problem(
                        _path([*path, key]),
                        f"extension field {key!r} is not namespaced"
                        " (use a prefix defined in @context, or a full http(s)/urn IRI)",
                    )
                )
        for key in _VOCAB_KEYS.intersection(node):
            value = node[key]
            if key == "persistentDisposition":
                if isinstance(value, dict):
                    for side in ("set", "unset"):
                        listed = value.get(side)
                        for i, v in enumerate(listed if isinstance(listed, list) else []):
                            p = _vocab_problem(_path([*path, key, side, i]), v, "disposition", local)
                            if p is not None:
                                out.append(p)
                continue
            p = _vocab_problem(_path([*path, key]), value, key, local)
            if p is not None:
                out.append(p)
        ilmd = node.get("ilmd")
        if isinstance(ilmd, dict):
            # Master data in ILMD is all the sender's own: every name must be namespaced.
            for name in ilmd:
                if not _namespaced(name, local):
                    flagged.add(_path([*path, "ilmd"]))
                    out.append(
                        Problem(_path([*path, "ilmd", name]), f"ilmd field {name!r} is not namespaced")
                    )
        for key, value in node.items():
            if key not in ("@context", "ilmd") and isinstance(value, (dict, list)):
                _walk(value, [*path, key], local, out, flagged)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, (dict, list)):
                _walk(value, [*path, i], prefixes, out, flagged)


_OWN_CHECKS = {"bizStep", "disposition", "set", "unset"}


def document_problems(doc: object) -> list[Problem]:
    """Everything wrong with an EPCIS document (empty when it may be captured)."""
    if not isinstance(doc, dict):
        return [Problem("(document)", "an EPCIS document is a JSON object")]
    out: list[Problem] = []
    flagged: set[str] = set()
    if "@context" in doc:
        ctx = doc["@context"]
        named = (
            [ctx]
            if isinstance(ctx, str)
            else [c for c in ctx if isinstance(c, str)]
            if isinstance(ctx, list)
            else []
        )
        if not _CONTEXTS.intersection(named):
            out.append(Problem("@context", f"the document's @context must include {EPCIS_CONTEXT}"))
    _walk(doc, [], set(_CONTEXT_PREFIXES), out, flagged)
    seen = {(p.field, p.message) for p in out}
    for error in validator().iter_errors(doc):
        where = list(error.instance_path)
        # Vocabulary and un-namespaced names have the clearer messages of the checks above.
        if (where and where[-1] in _OWN_CHECKS) or (
            where and isinstance(where[-1], int) and len(where) > 1 and where[-2] in ("set", "unset")
        ):
            continue
        if "propertyNames" in error.schema_path and _path(where) in flagged:
            continue
        problem = Problem(_path(where), error.message)
        if (problem.field, problem.message) not in seen:
            seen.add((problem.field, problem.message))
            out.append(problem)
        if len(out) >= _MAX_PROBLEMS:
            break
    return out
