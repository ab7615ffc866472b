"""Where a webhook may point: https only, and never at a private, loopback, link-local or other
non-public address (a webhook must not become a way to reach the platform's own network)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from coldchain.errors import ValidationError


def public_address(address: str) -> bool:
    """True for a globally routable unicast address (not private, loopback, link-local, multicast,
    reserved, unspecified, or an IPv4-mapped form of one of those)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_loopback or ip.is_link_local or ip.is_private)


def webhook_host(url: str, *, allow_private: bool = False) -> tuple[str, int]:
    """The (host, port) of a webhook URL after the checks that need no network; ValidationError else."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (allow_private and parts.scheme == "http"):
        raise ValidationError("a webhook URL must use https", field="webhook_url")
    if not parts.hostname:
        raise ValidationError("a webhook URL needs a host", field="webhook_url")
    if parts.username or parts.password:
        raise ValidationError("a webhook URL may not carry credentials; use the secret", field="webhook_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValidationError("the webhook URL's port is not valid", field="webhook_url") from None
    host = parts.hostname
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None and not allow_private and not public_address(host):
        raise ValidationError(
            f"a webhook may not point at {host} (not a public address)", field="webhook_url"
        )
    if not allow_private and host.lower() in {"localhost", "localhost.localdomain"}:
        raise ValidationError("a webhook may not point at localhost", field="webhook_url")
    return host, port
